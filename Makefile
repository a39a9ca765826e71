# Each target sets up its own virtualenv, so a fresh machine needs only python3 and make.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

# constraints.txt pins the versions CI last passed with: installs are repeatable and pip
# does not have to backtrack through the s3fs/aiobotocore/botocore pins.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gotham-connector demo

lint: $(STAMP)
	$(VENV)/bin/ruff check connector tests benchmarks
	$(VENV)/bin/ruff format --check connector tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) landing state .pytest_cache .mypy_cache .ruff_cache
