"""Safe, bounded YAML for configuration files (the edge's and the trainer's).

``load_yaml(path)`` returns the parsed document or raises ``YAMLConfigError``
with one line naming the file and, where there is one, the line:

- the file is read with a size limit (``MAX_BYTES``) and must be UTF-8;
- a key given twice in one mapping is refused (PyYAML silently keeps the
  last), naming the key and both lines;
- aliases are bounded: at most ``MAX_ALIASES``, the document expanded may
  hold at most ``MAX_NODES`` nodes (a "billion laughs" document is a few
  hundred bytes), and a recursive alias is refused;
- nesting deeper than Python's recursion allows is refused, not a traceback.

``cap(text)`` bounds any error message (line length and line count), so a
hostile value can never produce a multi-megabyte message.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from yaml.events import AliasEvent

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_NODES = 100_000
MAX_LINE_CHARS = 300
MAX_LINES = 20


class YAMLConfigError(ValueError):
    """A configuration file that cannot be read as YAML; one line naming the file."""


def cap(text: str, line_chars: int = MAX_LINE_CHARS, lines: int = MAX_LINES) -> str:
    """Bound a message: each line to ``line_chars``, at most ``lines`` lines."""
    out = []
    all_lines = str(text).splitlines() or [""]
    for ln in all_lines[:lines]:
        out.append(ln if len(ln) <= line_chars else ln[: line_chars - 3] + "...")
    if len(all_lines) > lines:
        out.append(f"  ... and {len(all_lines) - lines} more line(s)")
    return "\n".join(out)


class _Loader(yaml.SafeLoader):
    def __init__(self, stream):
        super().__init__(stream)
        self.aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise YAMLConfigError(f"more than {MAX_ALIASES} aliases (line {mark.line + 1})")
        return super().compose_node(parent, index)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None and self.aliases:
            _check_expansion(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise YAMLConfigError(f"key {str(key)[:80]!r} is given twice (lines {seen[key]} and "
                                              f"{line}); keep one")
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeConstructor refuses it with its own message
                    continue
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root) -> None:
    """Nodes in the document with every alias expanded; refuse past MAX_NODES or a cycle."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if done:
            on_path.discard(nid)
            kids = _children(node)
            sizes[nid] = min(MAX_NODES + 1, 1 + sum(sizes[id(k)] for k in kids))
            continue
        if nid in sizes:
            continue
        if nid in on_path:
            raise YAMLConfigError(f"recursive alias (line {node.start_mark.line + 1})")
        on_path.add(nid)
        stack.append((node, True))
        for k in _children(node):
            if id(k) in on_path:
                raise YAMLConfigError(f"recursive alias (line {k.start_mark.line + 1})")
            if id(k) not in sizes:
                stack.append((k, False))
    if sizes[id(root)] > MAX_NODES:
        raise YAMLConfigError(f"aliases expand the document past {MAX_NODES} nodes (an alias bomb?)")


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [x for pair in node.value for x in pair]
    return []


def _describe(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return " ".join(f"not valid YAML{where}: {problem}".split())


def parse_yaml(text: str) -> object:
    """Parse text with the bounded loader; YAMLConfigError without the file name."""
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except YAMLConfigError:
        raise
    except yaml.YAMLError as exc:
        raise YAMLConfigError(_describe(exc)) from None
    except RecursionError:
        raise YAMLConfigError("nested too deeply") from None
    finally:
        loader.dispose()


def load_yaml(path: str | Path, max_bytes: int = MAX_BYTES) -> object:
    """The YAML document in ``path``; YAMLConfigError (one line naming the file) when it cannot be used."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise YAMLConfigError(cap(f"{p}: cannot read the configuration ({exc.strerror or exc})")) from None
    if len(raw) > max_bytes:
        raise YAMLConfigError(f"{p}: larger than {max_bytes} bytes; a configuration is a few KB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise YAMLConfigError(f"{p}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {line}); "
                              "save it as UTF-8") from None
    try:
        return parse_yaml(text)
    except YAMLConfigError as exc:
        raise YAMLConfigError(cap(f"{p}: {exc}", lines=1)) from None
