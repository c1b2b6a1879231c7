"""The layout's rules, checked on the source (every import, lazy ones included):

- ``edge`` never imports ``trainer``, TensorFlow or Keras (one documented exception: the interpreter's
  last-resort ``tensorflow.lite`` fallback, inside a function);
- each part of ``edge`` imports only what its docstring's ``Imports from edge:`` line names
  (``edge/contract`` nothing else of the edge);
- ``trainer`` imports only the contract and the small MQTT settings ``trainer push`` needs;
- every folder's ``__init__.py`` opens with a docstring; no module is much over 400 lines.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EDGE = REPO / "edge"
MAX_LINES = 450  # "about 400": a module past this is doing more than one job
#: (importing module, imported module): allowed although the rules say no, and why
EXCEPTIONS = {
    ("edge.contract.interpreter", "tensorflow"): "LiteRT first, then tflite_runtime, then tensorflow.lite (lazy)",
    ("edge.config.web", "edge.outputs.web.listen"): "listen is checked with the dashboard's stdlib-only parser",
}
#: the trainer's window on the edge
TRAINER_MAY_IMPORT = (
    "edge.contract", "edge.config.mqtt", "edge.config.base", "edge.config.safe_yaml", "edge.outputs.mqtt.topics",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) for every absolute import of ``path``."""
    tree = ast.parse(path.read_text())
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, child.lineno, in_function))
                out.extend((f"{child.module}.{a.name}", child.lineno, in_function) for a in child.names
                           if (REPO / Path(*child.module.split("."), f"{a.name}.py")).exists())
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return out


def part_of(module: str) -> str:
    """``edge.outputs.mqtt.publisher`` -> ``outputs``; ``edge.types`` -> ``types``; ``edge`` -> ``edge``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] != "__main__" else "edge"


def declared(part: str) -> set[str]:
    """The parts of the edge that ``part`` says it may import (its docstring's ``Imports from edge:``)."""
    path = EDGE / part / "__init__.py" if (EDGE / part).is_dir() else EDGE / f"{part}.py"
    if part == "edge":
        path = EDGE / "__init__.py"
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    m = re.search(r"^Imports from edge: (.+?)(?:\.|\s\(.*)?$", doc, re.M)
    assert m, f"{path.relative_to(REPO)}: the docstring has no 'Imports from edge:' line"
    text = m.group(1).strip()
    if text.startswith("anything"):
        return {"*"}
    if text.startswith("none"):
        return set()
    return {p.strip() for p in text.split(",")}


def edge_modules() -> list[Path]:
    return sorted(p for p in EDGE.rglob("*.py"))


def test_edge_never_imports_trainer_tensorflow_or_keras():
    bad = []
    for path in edge_modules():
        me = module_name(path)
        for mod, line, in_function in imports(path):
            top = mod.split(".")[0]
            if top in ("trainer", "tensorflow", "keras", "tf_keras"):
                if (me, top) in EXCEPTIONS and in_function:
                    continue
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


def test_each_part_imports_only_what_its_docstring_says():
    bad = []
    for path in edge_modules():
        me = module_name(path)
        mine = part_of(me)
        allowed = declared(mine)
        for mod, line, _ in imports(path):
            if mod.split(".")[0] != "edge" or mod == "edge":
                continue
            theirs = part_of(mod)
            if theirs == mine or "*" in allowed or theirs in allowed:
                continue
            if any((me, m) in EXCEPTIONS for m in (mod, mod.rsplit(".", 1)[0])):
                continue
            bad.append(f"{path.relative_to(REPO)}:{line} ({mine}) imports {mod} ({theirs}); allowed: {sorted(allowed)}")
    assert not bad, "\n".join(bad)


def test_the_contract_imports_nothing_else_of_the_edge():
    assert declared("contract") == set()
    for path in (EDGE / "contract").glob("*.py"):
        others = [m for m, _, _ in imports(path) if m.startswith("edge.") and not m.startswith("edge.contract")]
        assert not others, (path.name, others)


def test_trainer_sees_only_the_contract_and_the_push_settings():
    bad = []
    for path in sorted((REPO / "trainer").rglob("*.py")):
        for mod, line, _ in imports(path):
            if mod.split(".")[0] == "edge" and not mod.startswith(TRAINER_MAY_IMPORT):
                bad.append(f"{path.relative_to(REPO)}:{line} imports {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("folder", sorted({p.parent for p in EDGE.rglob("__init__.py")} | {REPO / "trainer"}),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_folder_says_what_lives_there(folder):
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
    assert doc and len(doc.split()) >= 8, f"{folder.relative_to(REPO)}/__init__.py needs a docstring"


def test_no_module_is_much_over_400_lines():
    long = [f"{p.relative_to(REPO)}: {n} lines" for p in [*edge_modules(), *(REPO / "trainer").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def test_the_rules_would_catch_a_violation(tmp_path):
    """The checks above read real imports: a forbidden one in a scratch module is seen."""
    scratch = tmp_path / "m.py"
    scratch.write_text("def f():\n    import trainer.train\nfrom edge.service import runtime\n")
    found = {m for m, _, _ in imports(scratch)}
    assert {"trainer.train", "edge.service", "edge.service.runtime"} <= found
    assert part_of("edge.service.runtime") == "service" and "service" not in declared("contract")
