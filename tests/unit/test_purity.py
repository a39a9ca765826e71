"""Import discipline, checked on the source: pure modules import no I/O framework (directly or
through other connector modules), and the receiving process never loads the converter's heavy
libraries when it imports its own modules."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PURE = [
    "protocol",
    "batcher",
    "records",
    "columnar",
    "native",
    "partition",
    "gaps",
    "identity",
    "schema",
    "query",
    "timeparse",
    "layout",
    "ledger",
    "backoff",
    "config",
    "errors",
    "secret",
    "credentials",
    "icebergspec",
]
FORBIDDEN = {"websockets", "fsspec", "asyncio", "tenacity", "aiohttp", "s3fs"}
# The receiving process: the runner and everything it builds. Conversion, Parquet and the sink
# belong to the converter process, which imports them lazily (inside connector.worker's handlers).
RECEIVING = [
    "runner",
    "session",
    "intake",
    "committer",
    "coverage",
    "converter",
    "worker",
    "jobs",
    "spool",
    "checkpoint",
    "backfill",
    "metrics",
    "health",
    "oauth2",
]
HEAVY = {"pyarrow", "fsspec", "duckdb"}
# Loaded by the receiving process only when needed: aiohttp serves the opt-in endpoints and the
# REST calls of backfill and OAuth2. At start it would cost ~0.3 CPU-s and 12 MiB.
ON_DEMAND = {"aiohttp"}
PACKAGE = Path(importlib.util.find_spec("connector").origin).parent  # type: ignore[union-attr, arg-type]


def _source(module: str) -> tuple[str, str]:
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    if not path.is_file():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    return path.read_text(encoding="utf-8"), str(path)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST, *, module_level: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of the tree. module_level: only those that run when the module is
    imported (not inside a function body, not under `if TYPE_CHECKING:`)."""
    if not module_level:
        return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]
    found: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue  # its body runs when called (an import is a statement: only bodies hold one)
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)  # the `if` body is for type checkers only
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def imports_in(source: str, *, module_level: bool = False, filename: str = "<source>") -> set[str]:
    """Every module the source imports (absolute and relative), by its full name."""
    found: set[str] = set()
    for node in _import_nodes(ast.parse(source, filename), module_level=module_level):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        else:
            base = node.module or ""
            if node.level:
                base = "connector." + base if base else "connector"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def imports_of(module: str, *, module_level: bool = False) -> set[str]:
    """Every module a connector module imports; module_level: only at import time."""
    source, filename = _source(module)
    return imports_in(source, module_level=module_level, filename=filename)


def closure(module: str, *, module_level: bool = False) -> dict[str, str]:
    """Imported module -> the connector module that imports it, following connector.* imports."""
    seen: dict[str, str] = {}
    todo = [module]
    done: set[str] = set()
    while todo:
        current = todo.pop()
        if current in done:
            continue
        done.add(current)
        for name in imports_of(current, module_level=module_level):
            seen.setdefault(name, f"connector.{current}")
            if name.startswith("connector."):
                sub = name.removeprefix("connector.")
                exists = (PACKAGE / f"{sub.replace('.', '/')}.py").is_file() or (
                    PACKAGE / sub.replace(".", "/") / "__init__.py"
                ).is_file()
                if exists:
                    todo.append(sub)
    return seen


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_framework(module: str) -> None:
    # Every import counts here, even one inside a function: a pure module does no I/O at all.
    offenders = {
        name: via for name, via in closure(module).items() if name.split(".")[0] in FORBIDDEN
    }
    assert offenders == {}, f"connector.{module} pulls in I/O: {offenders}"


@pytest.mark.parametrize("module", RECEIVING)
def test_receiving_process_modules_import_no_converter_library(module: str) -> None:
    found = closure(module, module_level=True)
    offenders = {name: via for name, via in found.items() if name.split(".")[0] in HEAVY}
    assert offenders == {}, f"connector.{module} loads converter libraries: {offenders}"


@pytest.mark.parametrize("module", RECEIVING)
def test_receiving_process_modules_load_on_demand_libraries_only_when_used(module: str) -> None:
    found = closure(module, module_level=True)
    offenders = {name: via for name, via in found.items() if name.split(".")[0] in ON_DEMAND}
    assert offenders == {}, f"connector.{module} loads {sorted(ON_DEMAND)} at import: {offenders}"


def test_importing_the_runner_loads_no_converter_library() -> None:
    """The same, observed: a fresh interpreter that imports the command line and the runner (and
    so every module of the receiving process) has not loaded pyarrow, fsspec, duckdb or aiohttp
    (the command line builds every command's arguments, the simulator's too)."""
    script = textwrap.dedent(
        f"""
        import sys
        import connector.cli
        import connector.runner
        connector.cli.build_parser()
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({sorted(HEAVY | ON_DEMAND)!r})))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that passes vacuously: it finds the runner's asyncio import."""
    assert "asyncio" in imports_of("runner")
    assert "connector.timeparse" in closure("records")
    assert "msgspec" in closure("records")
    runner = closure("runner")
    assert {"websockets", "asyncio"} <= {n.split(".")[0] for n in runner}


def test_the_module_level_checker_sees_top_level_imports_only() -> None:
    """Guard the receiving-process check against passing vacuously, and pin what it skips."""
    source = textwrap.dedent(
        """
        import os
        from typing import TYPE_CHECKING
        try:
            import pyarrow as pa
        except ImportError:
            pa = None
        if TYPE_CHECKING:
            from duckdb import DuckDBPyConnection
        else:
            import json

        class Holder:
            import struct  # a class body runs at import time

            def method(self) -> None:
                import fsspec

        def later() -> None:
            from connector.sink import Sink

        async def later_async() -> None:
            import s3fs
        """
    )
    top = imports_in(source, module_level=True)
    assert {"os", "typing", "typing.TYPE_CHECKING", "pyarrow", "json", "struct"} <= top
    assert not top & {"duckdb", "duckdb.DuckDBPyConnection", "fsspec", "s3fs", "connector.sink"}
    everything = imports_in(source)
    assert {"duckdb", "fsspec", "s3fs", "connector.sink"} <= everything
    # On the real code: the converter's modules import pyarrow at the top ...
    assert "pyarrow" in imports_of("flush", module_level=True)
    assert "pyarrow" in {n.split(".")[0] for n in closure("worker")}
    # ... the worker only inside its handlers, which the module-level closure leaves out.
    assert "connector.flush" in imports_of("worker")
    assert "connector.flush" not in imports_of("worker", module_level=True)
    assert "connector.sink" not in imports_of("worker", module_level=True)  # TYPE_CHECKING only
    assert {"asyncio", "websockets"} <= {
        n.split(".")[0] for n in closure("runner", module_level=True)
    }
