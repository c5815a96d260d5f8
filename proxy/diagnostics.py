"""Diagnostics with positions, and the positioned YAML reader they come from.

Both ``proxy.yaml`` (:mod:`proxy.config`) and the policy files (:mod:`proxy.policy`) are read
the same way: the bytes are composed into a node tree with ``yaml.SafeLoader`` (no Python
object is ever constructed from the file), and the tree is rebuilt here as :class:`YScalar`,
:class:`YSeq` and :class:`YMap` values that each keep the 1-based line and column of their
node. Validators then report a :class:`Diagnostic` at the exact node that is wrong, and keep
going, so that one run of ``check`` shows every error of the file.

What the reader refuses, with a position:

* YAML syntax errors (the scanner/parser ``problem_mark``);
* more than one document in the file;
* anchors (``&name``), aliases (``*name``) and merge keys (``<<``): an operator edits these
  files by hand, and a value written out in full is easier to review than a reference;
* duplicate mapping keys (PyYAML silently keeps the last one);
* keys that are not plain strings, and explicit tags other than the standard scalar ones.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.error import Mark, MarkedYAMLError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "DECIMAL",
    "ConfigError",
    "Diagnostic",
    "Reporter",
    "YMap",
    "YNode",
    "YScalar",
    "YSeq",
    "check_keys",
    "describe",
    "display_path",
    "get_bool",
    "get_int",
    "get_list",
    "get_map",
    "get_number",
    "get_str",
    "parse_yaml",
    "read_file_bytes",
    "read_yaml_file",
    "size_text",
    "too_large",
]

ERROR = "error"
WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding in a file; ``line`` and ``column`` are 1-based."""

    file: str
    line: int
    column: int
    message: str
    severity: str = ERROR  # "error" | "warning"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == WARNING else ""
        return f"{self.file}:{self.line}:{self.column}: {prefix}{self.message}"

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR


class ConfigError(Exception):
    """A configuration or policy file is invalid; ``diagnostics`` holds every error found."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


# ---------------------------------------------------------------------------------------------
# The positioned value tree


@dataclass(frozen=True, slots=True)
class YScalar:
    """A scalar with its resolved value and the text it was written as.

    ``value`` is ``str``, ``int``, ``float``, ``bool`` or ``None`` (YAML 1.1 resolution of
    PyYAML's SafeLoader); ``text`` is the scalar as written, ``plain`` is False when quoted.
    """

    value: object
    text: str
    tag: str
    plain: bool
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class YSeq:
    items: tuple[YNode, ...]
    line: int
    column: int


@dataclass(frozen=True, slots=True)
class YMap:
    """A mapping; keys are plain-string scalars, unique (checked when the tree is built)."""

    items: tuple[tuple[YScalar, YNode], ...]
    line: int
    column: int

    def get(self, key: str) -> YNode | None:
        for k, v in self.items:
            if k.value == key:
                return v
        return None

    def keys(self) -> Iterator[str]:
        for k, _ in self.items:
            yield str(k.value)


YNode = YScalar | YSeq | YMap


def describe(node: YNode) -> str:
    """How a value reads in a message: "a mapping", "the string 'x'", "the integer 5"..."""
    if isinstance(node, YMap):
        return "a mapping"
    if isinstance(node, YSeq):
        return "a list"
    v = node.value
    if v is None:
        return "an empty value" if node.text == "" else f"null ({node.text!r})"
    if isinstance(v, bool):
        return f"the boolean {node.text}"
    if isinstance(v, int):
        return f"the integer {node.text}"
    if isinstance(v, float):
        return f"the number {node.text}"
    return f"the string {node.text!r}"


# ---------------------------------------------------------------------------------------------
# Reporting


class Reporter:
    """Collects the diagnostics of one file."""

    __slots__ = ("diagnostics", "file")

    def __init__(self, file: str) -> None:
        self.file = file
        self.diagnostics: list[Diagnostic] = []

    def _add(self, at: YNode | tuple[int, int] | None, message: str, severity: str) -> None:
        if at is None:
            line, column = 1, 1
        elif isinstance(at, tuple):
            line, column = at
        else:
            line, column = at.line, at.column
        self.diagnostics.append(Diagnostic(self.file, line, column, message, severity))

    def error(self, at: YNode | tuple[int, int] | None, message: str) -> None:
        self._add(at, message, ERROR)

    def warning(self, at: YNode | tuple[int, int] | None, message: str) -> None:
        self._add(at, message, WARNING)

    def example(self, what: str) -> str | None:
        """An example of the value called ``what`` in messages, added to the type errors of
        the typed getters below (the configuration's reporter has one for every key)."""
        return None

    def expected(self, at: YNode, what: str, form: str, got: str | None = None) -> None:
        """``WHAT must be FORM, got GOT`` (default: the value described), and an example of
        the form when :meth:`example` has one: ``; e.g. http: "127.0.0.1:9090"``."""
        self.error(at, f"{what} must be {form}, got {got if got is not None else describe(at)}"
                       f"{self.example_tail(what)}")

    def example_tail(self, what: str) -> str:
        """``; e.g. EXAMPLE`` for the value called ``what``, or nothing."""
        ex = self.example(what)
        return f"; e.g. {ex}" if ex else ""

    @property
    def errors(self) -> list[Diagnostic]:
        return _sorted(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> list[Diagnostic]:
        return _sorted(d for d in self.diagnostics if not d.is_error)

    @property
    def failed(self) -> bool:
        return any(d.is_error for d in self.diagnostics)


def _sorted(ds: Iterable[Diagnostic]) -> list[Diagnostic]:
    # Stable: two findings at the same place keep the order in which they were found.
    return sorted(ds, key=lambda d: (d.line, d.column))


def display_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------
# Reading

_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = frozenset(
    _STD + t for t in ("str", "int", "float", "bool", "null", "timestamp")
)


def _pos(mark: Mark | None) -> tuple[int, int]:
    if mark is None:
        return 1, 1
    return mark.line + 1, mark.column + 1


class _Loader(yaml.SafeLoader):
    """SafeLoader that reports anchors and aliases instead of honouring them."""

    def __init__(self, stream: str, report: Reporter) -> None:
        super().__init__(stream)
        self.report = report
        self.refused_references = False

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.anchors:  # an undefined one makes the composer raise
                self.refused_references = True
                self.report.error(
                    _pos(event.start_mark),
                    f"YAML aliases are not supported (*{event.anchor}): write the value out",
                )
        elif getattr(event, "anchor", None) is not None:
            self.refused_references = True
            self.report.error(
                _pos(event.start_mark),
                f"YAML anchors are not supported (&{event.anchor}): write the value out",
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, report: Reporter, keys_as_written: bool = False) -> YNode | None:
    """Compose ``text`` (one YAML document) into a positioned tree.

    Returns None when the document is unusable (syntax error, anchors, empty file); the
    reason is in ``report``. Errors inside a usable tree (duplicate keys, bad keys, tags) are
    reported and the offending entries left out.

    With ``keys_as_written``, a plain scalar key is the string it is written as, whatever
    YAML 1.1 would resolve it to: for files whose keys are names, such as user names
    (``1001:`` is the user "1001", ``0012:`` the user "0012", not the octal integer 10).
    """
    loader = _Loader(text, report)
    try:
        node = loader.get_single_node()
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            if exc.context.startswith("while"):
                # "expected <block end>, but found ... (while parsing a block mapping at 2:3)"
                message = f"{exc.problem} ({exc.context}"
                if exc.context_mark is not None and exc.context_mark is not mark:
                    line, column = _pos(exc.context_mark)
                    message += f" at {line}:{column}"
                message += ")"
            else:
                # "expected a single document in the stream, but found another document"
                message = f"{exc.context}, {exc.problem}"
        report.error(_pos(mark), f"YAML syntax error: {message}")
        return None
    finally:
        loader.dispose()
    if loader.refused_references:
        return None
    if node is None:
        report.error((1, 1), "the file is empty")
        return None
    return _build(node, report, SafeConstructor(), keys_as_written)


def size_text(n: int) -> str:
    """A byte count as an operator reads it: ``1 MiB``, ``256 KiB``, ``1500 bytes``."""
    for unit, shift in (("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def too_large(report: Reporter, size: int, max_bytes: int) -> None:
    """Report, at 1:1, a file of ``size`` bytes that is over the bound ``max_bytes``."""
    report.error((1, 1), f"the file is {size} bytes, more than the {size_text(max_bytes)} "
                 f"({max_bytes} bytes) allowed")


def read_file_bytes(path: Path, report: Reporter, max_bytes: int | None = None) -> bytes | None:
    """The bytes of ``path``, or None with the reason reported at 1:1: it cannot be read, or
    it is larger than ``max_bytes`` (then only ``max_bytes + 1`` bytes are ever read, so a
    huge file costs no more than the bound)."""
    try:
        with open(path, "rb") as f:
            if max_bytes is None:
                return f.read()
            data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                too_large(report, max(os.fstat(f.fileno()).st_size, len(data)), max_bytes)
                return None
            return data
    except OSError as exc:
        report.error((1, 1), f"cannot read: {exc.strerror or exc}")
        return None


def read_yaml_file(
    path: Path,
    report: Reporter,
    transform: Callable[[str], str] | None = None,
    keys_as_written: bool = False,
    max_bytes: int | None = None,
) -> tuple[YNode | None, bytes | None]:
    """Read and compose ``path``; returns (tree or None, the file's bytes or None).

    ``transform`` may rewrite the text before it is parsed (keeping line numbers);
    ``keys_as_written`` is that of :func:`parse_yaml`; a file over ``max_bytes`` is refused
    (:func:`read_file_bytes`).
    """
    data = read_file_bytes(path, report, max_bytes)
    if data is None:
        return None, None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        report.error((line, column), "cannot read: the file is not valid UTF-8")
        return None, data
    if transform is not None:
        text = transform(text)
    return parse_yaml(text, report, keys_as_written), data


def _build(node: Node, report: Reporter, ctor: SafeConstructor, keys_as_written: bool) -> YNode:
    line, column = _pos(node.start_mark)
    if isinstance(node, ScalarNode):
        return _scalar(node, report, ctor)
    if isinstance(node, SequenceNode):
        _check_collection_tag(node, "seq", report)
        return YSeq(
            tuple(_build(n, report, ctor, keys_as_written) for n in node.value), line, column
        )
    assert isinstance(node, MappingNode)
    _check_collection_tag(node, "map", report)
    items: list[tuple[YScalar, YNode]] = []
    seen: dict[str, YScalar] = {}
    for knode, vnode in node.value:
        kline, kcolumn = _pos(knode.start_mark)
        if knode.tag == _STD + "merge":
            report.error((kline, kcolumn), "YAML merge keys (<<) are not supported")
            continue
        if not isinstance(knode, ScalarNode):
            report.error((kline, kcolumn), "a key must be a plain string, not a list or mapping")
            continue
        if keys_as_written and knode.style is None and knode.tag in _SCALAR_TAGS:
            key = YScalar(str(knode.value), str(knode.value), _STD + "str", True, kline, kcolumn)
        else:
            key = _scalar(knode, report, ctor)
        if not isinstance(key.value, str) or key.tag != _STD + "str":
            report.error(key, f"a key must be a string, got {describe(key)}")
            continue
        first = seen.get(key.value)
        if first is not None:
            report.error(
                key, f"duplicate key {key.value!r} (first at {first.line}:{first.column})"
            )
            continue
        seen[key.value] = key
        items.append((key, _build(vnode, report, ctor, keys_as_written)))
    return YMap(tuple(items), line, column)


def _check_collection_tag(node: Node, kind: str, report: Reporter) -> None:
    if node.tag != _STD + kind:
        report.error(_pos(node.start_mark), f"unsupported YAML tag {node.tag}")


def _scalar(node: ScalarNode, report: Reporter, ctor: SafeConstructor) -> YScalar:
    line, column = _pos(node.start_mark)
    text = str(node.value)
    plain = node.style is None
    tag = node.tag
    value: object
    if tag == _STD + "str" or tag == _STD + "timestamp":
        value = text
        tag = _STD + "str"
    elif tag in _SCALAR_TAGS:
        try:
            value = ctor.construct_object(node)
        except (MarkedYAMLError, ValueError) as exc:
            report.error((line, column), f"invalid {tag.removeprefix(_STD)} value {text!r}: {exc}")
            value = text
            tag = _STD + "str"
    else:
        report.error((line, column), f"unsupported YAML tag {tag}")
        value = text
        tag = _STD + "str"
    return YScalar(value, text, tag, plain, line, column)


# ---------------------------------------------------------------------------------------------
# Typed access with messages


def check_keys(
    report: Reporter,
    mapping: YMap,
    allowed: Sequence[str],
    required: Sequence[str],
    where: str,
) -> dict[str, YNode]:
    """Report unknown and missing keys of ``mapping``; return the known entries.

    ``where`` prefixes the messages ("rule 'x'", "redirects"); empty for the top level.
    """
    prefix = f"{where}: " if where else ""
    found: dict[str, YNode] = {}
    for key, value in mapping.items:
        name = str(key.value)
        if name in allowed:
            found[name] = value
            continue
        hint = difflib.get_close_matches(name, allowed, n=1) or [
            a for a in allowed if a.startswith(f"{name}_")
        ][:1]
        maybe = f" (did you mean {hint[0]!r}?)" if hint else ""
        report.error(
            key, f"{prefix}unknown key {name!r}{maybe}; allowed keys: {', '.join(allowed)}"
        )
    for name in required:
        if name not in found:
            report.error(mapping, f"{prefix}missing required key {name!r}")
    return found


DECIMAL = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
"""How an integer must be written: YAML 1.1 reads 0600 as octal and 0x1F as hex."""


def get_int(report: Reporter, node: YNode, what: str, lo: int, hi: int) -> int | None:
    """A decimal integer in ``lo..hi`` (booleans, floats and strings refused)."""
    if isinstance(node, YScalar) and type(node.value) is int:
        if not DECIMAL.fullmatch(node.text):
            report.expected(node, what, "a decimal integer", repr(node.text))
            return None
        value = node.value
        if not lo <= value <= hi:
            report.error(node, f"{what} must be between {lo} and {hi}, got {value}")
            return None
        return value
    report.expected(node, what, "an integer")
    return None


def get_number(report: Reporter, node: YNode, what: str, lo: float, hi: float) -> float | None:
    """An integer or decimal number in ``lo..hi``."""
    if isinstance(node, YScalar) and type(node.value) in (int, float):
        value = float(node.value)  # type: ignore[arg-type]
        if not lo <= value <= hi:
            report.error(node, f"{what} must be between {lo:g} and {hi:g}, got {node.text}")
            return None
        return value
    report.expected(node, what, "a number")
    return None


def get_bool(report: Reporter, node: YNode, what: str) -> bool | None:
    """Strictly ``true`` or ``false`` (YAML 1.1's yes/no/on/off are refused)."""
    if isinstance(node, YScalar) and node.plain and node.text in ("true", "false"):
        return node.text == "true"
    shown = repr(node.text) if isinstance(node, YScalar) and node.text else describe(node)
    report.expected(node, what, "true or false", shown)
    return None


def get_str(report: Reporter, node: YNode, what: str) -> str | None:
    """A non-empty string (quoted or plain)."""
    if isinstance(node, YScalar) and isinstance(node.value, str):
        if not node.value.strip():
            report.error(node, f"{what} must not be empty{report.example_tail(what)}")
            return None
        return node.value
    report.expected(node, what, "a string")
    return None


def get_map(report: Reporter, node: YNode, what: str) -> YMap | None:
    if isinstance(node, YMap):
        return node
    report.expected(node, what, "a mapping")
    return None


def get_list(report: Reporter, node: YNode, what: str) -> YSeq | None:
    if isinstance(node, YSeq):
        return node
    report.expected(node, what, "a list")
    return None
