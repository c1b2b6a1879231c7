"""The docs stay true of the code: links resolve, the commands and options they quote exist.

Reads README.md, CONTRIBUTING.md, CHANGELOG.md and docs/*.md; builds the real
``python -m edge`` and ``python -m trainer`` parsers (no command runs).
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_readme_is_short_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "./dev.sh demo" in text and "./dev.sh test" in text
    dev = (ROOT / "dev.sh").read_text()
    assert re.search(r"^\s*demo\)", dev, re.M) and re.search(r"^\s*test\)", dev, re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif frag and dest.suffix == ".md" and frag not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _quoted_commands(package: str):
    """(page, command, options) for every `python -m <package> CMD ...` line in a code block or span."""
    pattern = re.compile(rf"python -m {package}((?: -v+)?) ([a-z][a-z-]*)([^`\n|]*)")
    for page in PAGES:
        text = page.read_text()
        for m in pattern.finditer(text):
            yield page, m.group(2), re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", m.group(3))


@pytest.mark.parametrize("package", ["edge", "trainer"])
def test_quoted_commands_and_options_exist(package):
    if package == "edge":
        from edge.cli import build_parser
    else:
        from trainer.cli import build_parser
    commands = _subparsers(build_parser())
    wrong = []
    for page, cmd, options in _quoted_commands(package):
        where = page.relative_to(ROOT)
        if cmd not in commands:
            wrong.append(f"{where}: python -m {package} {cmd}")
            continue
        known = {s for a in commands[cmd]._actions for s in a.option_strings}
        wrong += [f"{where}: python -m {package} {cmd} {o}" for o in options if o not in known]
    assert not wrong, "commands or options the code does not have: " + "; ".join(sorted(set(wrong)))
