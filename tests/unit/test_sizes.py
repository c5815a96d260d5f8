"""Size limits that keep every module readable in one sitting (docs/ARCHITECTURE.md):
no file in proxy/ over 700 lines, no class over 450, no function over 80 (the SIP parser's
``parse_message`` excepted: one linear pass over the bytes, kept whole for speed)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"

MAX_FILE_LINES = 700
MAX_CLASS_LINES = 450
MAX_FUNCTION_LINES = 80
EXEMPT_FUNCTIONS = frozenset({"parse_message"})


def sources() -> list[Path]:
    return sorted(PROXY.rglob("*.py"))


def test_there_are_sources() -> None:
    assert len(sources()) > 20


def test_no_file_over_700_lines() -> None:
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in sources()
           if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert big == []


def test_no_class_over_450_lines_and_no_function_over_80() -> None:
    big = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                if node.name in EXEMPT_FUNCTIONS:
                    continue
                limit = MAX_FUNCTION_LINES
            else:
                continue
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            n = (node.end_lineno or node.lineno) - start + 1
            if n > limit:
                big.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.name} {n} lines")
    assert big == []
