"""The layer order of docs/architecture.md, enforced: every import in every module of the
package, at module level or inside a function, points down the order (or stays in its own
package). A function-level import cannot hide an upward arrow."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A package may import any package of a lower layer, and itself; never one of
# its own layer (front ends do not lean on each other) or a higher one.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("errors",)),
    ("foundations", ("privacy", "filelock", "jsonl", "fetch", "config", "assets", "entry")),
    ("models and search", ("model", "retrieval")),
    ("data, scoring, generation, export", ("data", "eval", "generation", "export")),
    ("training", ("train", "testing")),
    ("chat pipeline", ("chat",)),
    ("conversation service", ("service",)),
    ("doors", ("door",)),
    ("front ends", ("terminal", "webui", "serve")),
    ("whole-kit jobs", ("doctor", "kaggle")),
]
LAYER_OF = {pkg: i for i, (_, pkgs) in enumerate(LAYERS) for pkg in pkgs}


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "qwen_kit" and len(parts) > 1 else None


def _modules() -> list[Path]:
    return sorted(p for p in (ROOT / "qwen_kit").rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every ``qwen_kit.*`` module ``path`` imports, anywhere in it, with the line."""
    return _imports_in(path.read_text(encoding="utf-8"), path.relative_to(ROOT).with_suffix("").parts)


def _imports_in(text: str, here: tuple[str, ...]) -> list[tuple[int, str]]:
    tree = ast.parse(text)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(here[:-1])[: len(here) - node.level]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module == "qwen_kit":  # from qwen_kit import serve: each name is a package
                found += [(node.lineno, f"qwen_kit.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")):
            found.append((node.lineno, node.args[0].value))  # importlib.import_module("qwen_kit.x")
    return [(line, m) for line, m in found if m == "qwen_kit" or m.startswith("qwen_kit.")]


def test_every_package_has_a_layer():
    packages = {p.relative_to(ROOT / "qwen_kit").parts[0].removesuffix(".py") for p in _modules()}
    packages.discard("__init__")
    assert sorted(packages - set(LAYER_OF)) == [], "add the new package to LAYERS and docs/architecture.md"


def test_imports_point_down_the_layers():
    wrong = []
    for path in _modules():
        source = _package(".".join(path.relative_to(ROOT).with_suffix("").parts))
        if source is None:
            continue
        for line, module in _imports(path):
            target = _package(module)
            if target is None or target == source:
                continue
            if LAYER_OF[target] >= LAYER_OF[source]:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module} "
                             f"({LAYERS[LAYER_OF[source]][0]} -> {LAYERS[LAYER_OF[target]][0]})")
    assert wrong == []


@pytest.mark.parametrize("text, expected", [
    ("def f():\n    from qwen_kit.serve.server import run_server\n", ["qwen_kit.serve.server"]),
    ("import qwen_kit.webui.app as app\n", ["qwen_kit.webui.app"]),
    ("import os\nfrom typing import Any\n", []),
    ("def f():\n    from qwen_kit import serve, webui\n", ["qwen_kit.serve", "qwen_kit.webui"]),
    ("import importlib\nm = importlib.import_module('qwen_kit.serve.server')\n", ["qwen_kit.serve.server"]),
    ("def f():\n    return __import__('qwen_kit.webui.app')\n", ["qwen_kit.webui.app"]),
])
def test_the_walker_sees_imports_inside_functions(text, expected):
    # the check above is only as good as what it finds: a nested import must be found
    assert [m for _, m in _imports_in(text, ("qwen_kit", "chat", "probe"))] == expected


def test_relative_imports_resolve_to_their_package():
    assert [m for _, m in _imports_in("from ..serve import server\n", ("qwen_kit", "chat", "probe"))] \
        == ["qwen_kit.serve"]
    assert [m for _, m in _imports_in("from .. import serve\n", ("qwen_kit", "chat", "probe"))] \
        == ["qwen_kit.serve"]
