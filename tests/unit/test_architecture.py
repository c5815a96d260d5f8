"""The layering rules of docs/ARCHITECTURE.md, checked on the source (ast, nothing imported).

- The sans-IO packages (proxy/sip, proxy/transaction, proxy/core, proxy/policy) do no IO,
  read no clock and write no log: no asyncio, socket, ssl, selectors, ``time`` or
  ``logging`` module, and neither
  proxy.transport nor proxy.runtime.
- proxy/transport never imports proxy.core or proxy.runtime: the values it shares with the
  core live in proxy.sip.transport.
- proxy/sip is the bottom layer: nothing from proxy outside proxy.sip.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "proxy"

SANS_IO = ("sip", "transaction", "core", "policy")
#: ``logging`` too: the core hands the lines it wants written out in Effects (LogLine)
IO_MODULES = frozenset({"asyncio", "socket", "ssl", "selectors", "time", "logging"})


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, relative ones resolved.
    ``from a import b`` counts as both ``a`` and ``a.b`` (``b`` may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found.extend((node.lineno, f"{mod}.{a.name}") for a in node.names if a.name != "*")
    return found


def files(package: str) -> list[Path]:
    return sorted((PROXY / package).rglob("*.py"))


def violations(package: str, forbidden: Callable[[str], bool]) -> list[str]:
    out = []
    for path in files(package):
        for line, mod in imports_of(path):
            if forbidden(mod):
                out.append(f"{path.relative_to(ROOT)}:{line}: imports {mod}")
    return sorted(set(out))


def is_under(mod: str, *roots: str) -> bool:
    return any(mod == r or mod.startswith(r + ".") for r in roots)


def test_the_packages_exist() -> None:
    for package in (*SANS_IO, "transport", "runtime", "store"):
        assert files(package), f"proxy/{package} has no modules"


def test_the_import_walker_sees_relative_and_from_imports() -> None:
    found = {m for _, m in imports_of(PROXY / "sip" / "headers.py")}
    assert "proxy.sip.errors" in found and "re" in found
    assert {m for _, m in imports_of(PROXY / "sip" / "__init__.py")} >= {"proxy.sip.build"}


@pytest.mark.parametrize("package", SANS_IO)
def test_sans_io_packages_do_no_io(package: str) -> None:
    def forbidden(mod: str) -> bool:
        return mod.split(".")[0] in IO_MODULES or is_under(mod, "proxy.transport", "proxy.runtime")

    assert violations(package, forbidden) == []


def test_transport_does_not_import_the_core_or_the_runtime() -> None:
    assert violations("transport", lambda m: is_under(m, "proxy.core", "proxy.runtime")) == []


def test_sip_imports_nothing_from_proxy_outside_sip() -> None:
    def forbidden(mod: str) -> bool:
        return is_under(mod, "proxy") and not is_under(mod, "proxy.sip")

    assert violations("sip", forbidden) == []


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """The rules do fail: a module importing asyncio and the core is reported."""
    fake = tmp_path / "proxy" / "sip" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import asyncio\nfrom proxy.core.types import Target\nfrom .. import core\n")
    found = {m for _, m in imports_of(fake, tmp_path)}
    assert {"asyncio", "proxy.core.types", "proxy.core"} <= found


def runtime_imports(path: Path, root: Path = ROOT) -> set[str]:
    """The modules ``path`` imports when it runs: every import (module level or inside a
    function) but those under ``if TYPE_CHECKING:``, which only the type checker reads."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    lines = {n.lineno for n in ast.walk(tree)
             if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in typing_only}
    return {mod for line, mod in imports_of(path, root) if line in lines}


def import_cycles(package: Path, root: Path = ROOT) -> list[list[str]]:
    """The strongly connected components (more than one module) of the run-time import
    graph of the modules under ``package`` (packages' ``__init__`` left out: importing
    ``a.b`` runs ``a/__init__``, which imports nothing here)."""
    paths = {module_name(p, root): p for p in sorted(package.rglob("*.py"))
             if p.name != "__init__.py"}
    graph = {m: sorted(i for i in runtime_imports(p, root) if i in paths and i != m)
             for m, p in paths.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph[v]:
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in order:
            visit(v)
    return cycles


def test_no_module_of_the_core_imports_another_in_a_cycle() -> None:
    """Issue 20: the core's modules form layers (docs/ARCHITECTURE.md), so each can be read
    and tested above the ones it uses; a type-only import (``TYPE_CHECKING``) is no cycle."""
    assert import_cycles(PROXY / "core") == []


def test_an_import_cycle_is_caught(tmp_path: Path) -> None:
    pkg = tmp_path / "proxy" / "core"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from proxy.core import b\n")
    (pkg / "b.py").write_text("def f():\n    from proxy.core.c import g\n")
    (pkg / "c.py").write_text("import proxy.core.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from proxy.core import a\n")
    (pkg / "e.py").write_text("from proxy.core import d\n")
    assert import_cycles(pkg, tmp_path) == [["proxy.core.a", "proxy.core.b", "proxy.core.c"]]


def core_field_writes(path: Path, root: Path = ROOT) -> list[str]:
    """Assignments in ``path`` to an attribute or item reached through the core object (a
    name ``core`` or an attribute ``.core``): ``rt.core.draining = True``,
    ``core.cluster.peers = ...``, ``self.core.upstream_addrs |= ...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        for target in targets:
            for part in ast.walk(target):
                if not isinstance(part, ast.Attribute | ast.Subscript):
                    continue
                chain = ast.unparse(part.value).split(".")
                if "core" in chain:
                    found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
                    break
    return found


def test_no_code_outside_the_core_assigns_a_field_of_the_core() -> None:
    """Issue 20 (aioquic's rule): every input to the core is a ProxyCore method returning
    Effects (``drain``, ``set_policy``, ``apply_store_change`` ...); the runtime never writes
    the core's state."""
    writes = [w for p in sorted(PROXY.rglob("*.py")) if PROXY / "core" not in p.parents
              for w in core_field_writes(p)]
    assert writes == []


def test_a_write_to_a_core_field_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "proxy" / "runtime" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("self.core.draining = True\ncore.cluster.peers = {}\nrt.core.a[1] += 2\n"
                   "self.cores = 1\nself.core_count = 2\nx = core.policy\n")
    assert [w.rsplit(": ", 1)[1] for w in core_field_writes(bad, tmp_path)] == [
        "self.core.draining = True", "core.cluster.peers = {}", "rt.core.a[1] += 2"]


def core_entry_points() -> set[str]:
    """What code outside the core may use of a ProxyCore: its public methods (each an input
    returning Effects, or a question like ``conn_in_use``) and ``view`` (read-only values)."""
    tree = ast.parse((PROXY / "core" / "core.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "ProxyCore"]
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)
               and not n.name.startswith("_")
               and not any(ast.unparse(d) == "property" for d in n.decorator_list)}
    return methods | {"view"}


def core_reads(path: Path, allowed: set[str], root: Path = ROOT) -> list[str]:
    """Uses in ``path`` of an attribute of the core object (``x.core.NAME``, ``core.NAME``)
    other than ``allowed``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and node.attr not in allowed:
            base = node.value
            if (isinstance(base, ast.Name) and base.id == "core") or (
                    isinstance(base, ast.Attribute) and base.attr == "core"):
                found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_runtime_reads_the_core_only_through_its_view() -> None:
    """The core's state is its own: outside proxy/core it is read through ``core.view``
    (proxy/core/view.py) and changed only by the core's methods."""
    allowed = core_entry_points()
    assert {"on_message", "drain", "set_policy", "apply_store_change", "view"} <= allowed
    reads = [r for p in sorted(PROXY.rglob("*.py")) if PROXY / "core" not in p.parents
             for r in core_reads(p, allowed)]
    assert reads == []


def test_a_read_past_the_view_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "proxy" / "runtime" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("n = len(rt.core.dialogs)\nv = core.view.calls\nfx = self.core.drain(1.0)\n"
                   "p = core._policy\n")
    assert {r.rsplit(": ", 1)[1] for r in core_reads(bad, core_entry_points(), tmp_path)} == {
        "rt.core.dialogs", "core._policy"}
