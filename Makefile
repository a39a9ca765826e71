# Each target sets up its own virtualenv, so a fresh machine needs only python3 and make.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
# constraints.txt pins the versions CI last passed with: installs are repeatable and pip
# does not have to backtrack through the s3fs/aiobotocore/botocore pins.
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: demo test lint typecheck bench soak fuzz clean

# connector/_native.c is compiled by the install: an edit to it must rebuild.
$(RUNTIME): pyproject.toml constraints.txt connector/_native.c
	python3 -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -c constraints.txt -e .
	touch $(RUNTIME)

# The demo needs only the runtime dependencies: a shorter first run.
$(DEV): $(RUNTIME)
	$(PIP) -c constraints.txt -e '.[dev]'
	touch $(DEV)

demo: $(RUNTIME)
	$(VENV)/bin/gotham-connector demo

lint: $(DEV)
	$(VENV)/bin/ruff check connector tests benchmarks
	$(VENV)/bin/ruff format --check connector tests benchmarks

typecheck: $(DEV)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest

# The benchmark's own venv holds the runtime dependencies only, as a deployment does: the test
# extras bring numpy, which pyarrow then imports into every process (+16 MiB or more of RSS).
BENCH_VENV := .venv-bench
$(BENCH_VENV)/.installed: pyproject.toml constraints.txt connector/_native.c
	python3 -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e .
	touch $@

# Side by side with the obvious script (~12 min on 2 cores); results in benchmarks/results/.
bench: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/bench.py --default-batch

# Ten minutes at a steady rate: RSS slope, spool size, landing lag (benchmarks/results/soak.*).
soak: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/soak.py

# The live fuzzer at length: generated hostile frames through a real connector against the
# simulator (5,000 examples: ~7.5 min and ~1 GB on 2 cores). `make test` runs 200.
FUZZ_EXAMPLES ?= 5000
fuzz: $(DEV)
	GOTHAM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -s -o timeout=0 tests/e2e/test_fuzz.py

clean:
	rm -rf $(VENV) $(BENCH_VENV) landing .demo-state .pytest_cache .mypy_cache .ruff_cache
