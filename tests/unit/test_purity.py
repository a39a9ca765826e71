"""Pure modules import no I/O framework, directly or through other connector modules."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PURE = [
    "protocol",
    "batcher",
    "records",
    "schema",
    "query",
    "timeparse",
    "layout",
    "ledger",
    "backoff",
    "config",
    "errors",
    "secret",
]
FORBIDDEN = {"websockets", "fsspec", "asyncio", "tenacity", "aiohttp", "s3fs"}
PACKAGE = Path(importlib.util.find_spec("connector").origin).parent  # type: ignore[union-attr, arg-type]


def imports_of(module: str) -> set[str]:
    """Every module a connector module imports (absolute and relative), by its full name."""
    path = PACKAGE / f"{module.replace('.', '/')}.py"
    if not path.is_file():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "connector." + base if base else "connector"
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def closure(module: str) -> dict[str, str]:
    """Imported module -> the connector module that imports it, following connector.* imports."""
    seen: dict[str, str] = {}
    todo = [module]
    done: set[str] = set()
    while todo:
        current = todo.pop()
        if current in done:
            continue
        done.add(current)
        for name in imports_of(current):
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
    offenders = {
        name: via for name, via in closure(module).items() if name.split(".")[0] in FORBIDDEN
    }
    assert offenders == {}, f"connector.{module} pulls in I/O: {offenders}"


def test_the_checker_sees_imports() -> None:
    """Guard against a checker that passes vacuously: it finds the runner's asyncio import."""
    assert "asyncio" in imports_of("runner")
    assert "connector.timeparse" in closure("records")
    assert "msgspec" in closure("records")
    runner = closure("runner")
    assert {"websockets", "asyncio"} <= {n.split(".")[0] for n in runner}
