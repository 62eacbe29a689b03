"""The import direction of DESIGN's layers, checked on the source (lazy imports inside functions
included): core <- retrieval, models <- data, agents <- graphs <- training, eval <- pipelines <- cli.

A module may import its own layer or any layer below it, never one above."""

from __future__ import annotations

import ast
from pathlib import Path

import masksearch

PKG = Path(masksearch.__file__).parent

# rank of each first-level name under masksearch/; a higher rank may import a lower one
LAYERS: dict[str, int] = {
    "trajectory": 0, "protocol": 0, "scoring": 0, "utils": 0, "paths": 0, "errors": 0, "__init__": 0,
    "retrieval": 1, "models": 1,
    "data": 2, "agents": 2,
    "graphs": 3,
    "training": 4, "eval": 4,
    "pipelines": 5, "quickstart": 5,
    "cli": 6, "__main__": 6,
}


def _layer_of_file(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def _imported_layers(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "masksearch" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def test_every_first_level_module_has_a_layer():
    names = {p.name.removesuffix(".py") for p in PKG.iterdir()
             if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert names - set(LAYERS) == set(), "give the new module a layer in tests/test_layers.py and DESIGN"


def test_imports_point_one_way():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        own = _layer_of_file(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for lineno, target in _imported_layers(tree):
            if target not in LAYERS:
                continue
            if LAYERS[target] > LAYERS[own]:
                bad.append(f"{path.relative_to(PKG.parent)}:{lineno} ({own}) imports masksearch.{target}")
    assert not bad, "imports against the layer direction:\n" + "\n".join(bad)


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself can fail: an upward import in a parsed snippet is found."""
    tree = ast.parse("def f():\n    from masksearch.training.sft import run_sft\n")
    assert (2, "training") in _imported_layers(tree)
    assert LAYERS["training"] > LAYERS["retrieval"]
