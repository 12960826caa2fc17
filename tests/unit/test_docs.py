"""What the documents quote exists: every path, test (``file::test``), ``tandem.*`` module and
code name in backquotes in README.md and docs/ names something in this tree. Documentation that
drifts from the code misleads exactly the reader it was written for."""

from __future__ import annotations

import ast
import builtins
import importlib
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FOLDERS = ("engine", "fsdriver", "heartbeat", "vip", "native", "bench", "tests", "docs", ".ci")
PATH = re.compile("^(?:" + "|".join(re.escape(f) for f in FOLDERS) + r")/[\w./-]*$")
TEST_REF = re.compile(r"^(?P<path>[\w./-]+\.py)?::(?P<name>\w+)$")
DOTTED = re.compile(r"^tandem(?:\.\w+)+$")
# a code name: CamelCase, or a leading underscore, optionally .attribute, optionally (arguments)
CODE_NAME = re.compile(r"^(?P<name>_?[A-Z]\w*[a-z]\w*|_\w+)(?:\.(?P<attr>\w+))?(?:\(.*\))?$")


def _spans(text: str) -> list[str]:
    # code blocks hold shell sessions and sketches, not references
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"`([^`\n]+)`", text)


@cache
def _defined_names() -> frozenset[str]:
    names: set[str] = set()
    for folder in FOLDERS[:7]:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(node.name)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
                elif isinstance(node, ast.ImportFrom):  # what we use of other libraries
                    names.update(alias.name for alias in node.names)
    return frozenset(names | set(dir(builtins)))


def _functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def _module_or_attribute_exists(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        try:
            target: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def _problems(document: Path) -> list[str]:
    shown = document.relative_to(ROOT) if document.is_relative_to(ROOT) else document.name
    found = []
    named_files: list[Path] = []  # a bare ``::test`` is one of the test files named before it
    for number, line in enumerate(document.read_text().splitlines(), 1):
        for span in _spans(line):
            where = f"{shown}:{number}: `{span}`"
            span = span.strip()
            test = TEST_REF.match(span)
            if test:
                if test.group("path"):
                    named = ROOT / test.group("path")
                    if not named.is_file():
                        found.append(f"{where}: no such file")
                        continue
                    candidates = [named]
                    named_files.append(named)
                else:
                    candidates = named_files
                if not any(test.group("name") in _functions_in(f) for f in candidates):
                    found.append(f"{where}: no test of that name in the files named before")
                continue
            if PATH.match(span):
                if not (ROOT / span).exists():
                    found.append(f"{where}: no such path")
                elif span.endswith(".py"):
                    named_files.append(ROOT / span)
                continue
            if DOTTED.match(span):
                if not _module_or_attribute_exists(span):
                    found.append(f"{where}: no such module or name")
                continue
            name = CODE_NAME.match(span)
            if name and name.group("name") not in _defined_names():
                found.append(f"{where}: nothing of that name is defined")
            elif name and name.group("attr") and name.group("attr") not in _defined_names():
                found.append(f"{where}: no attribute {name.group('attr')!r} is defined")
    return found


def test_every_quoted_path_test_and_name_exists() -> None:
    problems = [problem for document in DOCUMENTS for problem in _problems(document)]
    assert problems == [], "\n".join(problems)


def test_the_checker_catches_drift(tmp_path: Path) -> None:
    stale = tmp_path / "stale.md"
    stale.write_text(
        "`tests/mount/test_replay.py` `_Changes` `tandem.engine.wire` "
        "`tests/unit/test_wire.py::test_no_such_test` `engine/protocol/codec.py` "
        "`tests/unit/test_wire.py::test_not_a_tandem_peer` `Connection.receive`\n"
    )
    problems = _problems(stale)
    assert len(problems) == 4, problems
