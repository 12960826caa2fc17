"""Imports flow one way: each folder may import only the folders below it (docs/architecture.md,
"File map"). A new import that runs back up fails here, with the line that does it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# lowest first; a package may import itself and anything listed before it, except where
# `SIBLINGS` says two of the same rank must not know each other
LAYERS = [
    "tandem.native",
    "tandem.fsdriver",
    "tandem.heartbeat",
    "tandem.vip",
    "tandem.engine.protocol",
    "tandem.engine.control",
    "tandem.engine.config",
    "tandem.engine.replica",
    "tandem.engine.reintegration",
    "tandem.engine.replication",
    "tandem.engine.failover",
    "tandem.engine.api",
    "tandem.engine.node",
    "tandem.engine.lab",
    "tandem.engine.cli",
    "tandem.bench",
]
# the folders below the engine know nothing of each other (or of the engine)
INDEPENDENT = {"tandem.native", "tandem.fsdriver", "tandem.heartbeat", "tandem.vip"}
# except the mount's own C half: the native data plane serves the FUSE requests fsdriver handles
ACROSS = {("tandem.fsdriver", "tandem.native")}
ANYONE_MAY_IMPORT = {"tandem.engine"}  # the version only


def _package_of(module: str) -> str:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


def _file_module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "tandem." + ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found if name.startswith("tandem")]


def product_files() -> list[Path]:
    folders = ["engine", "fsdriver", "heartbeat", "vip", "native", "bench"]
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def test_every_import_goes_down_the_layers() -> None:
    wrong = []
    for path in product_files():
        mine = _package_of(_file_module(path))
        if mine in ANYONE_MAY_IMPORT:
            assert _imports(path) == [], f"{path} must import nothing of ours"
            continue
        rank = LAYERS.index(mine)
        for line, name in _imports(path):
            theirs = _package_of(name)
            if theirs == mine or theirs in ANYONE_MAY_IMPORT:
                continue
            allowed = theirs in LAYERS and LAYERS.index(theirs) < rank
            if allowed and mine in INDEPENDENT and theirs in INDEPENDENT:
                allowed = (mine, theirs) in ACROSS
            if not allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mine} imports {name}")
    assert wrong == []


def test_the_layer_list_names_every_product_folder() -> None:
    packages = {_package_of(_file_module(p)) for p in product_files()}
    assert packages - set(LAYERS) - ANYONE_MAY_IMPORT == set()
