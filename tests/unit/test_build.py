"""The compiled build (README "Compiled build"): which one this process runs, and that it is
not stale. (That a spawned proxy, the venv's entry point and a copied tree run the right build
needs other processes: tests/system/test_build_processes.py.)

``make test`` runs the suite with ``SIP_POLICY_PROXY_EXPECT=compiled`` (after ``make
compiled``), ``make test-pure`` with ``SIP_POLICY_PROXY_EXPECT=pure`` and
``SIP_POLICY_PROXY_PURE=1``: the build this process and the proxies the tests spawn run must
be that one, so a compiled run that silently ran the .py files (or the reverse) fails.
"""

from __future__ import annotations

import importlib
import os
import re
import sysconfig
from pathlib import Path

import pytest

import proxy
from proxy.cli import main, version_text

REPO = Path(__file__).resolve().parents[2]
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
EXPECT_ENV = "SIP_POLICY_PROXY_EXPECT"
KINDS = {"compiled": proxy.COMPILED, "pure": proxy.PURE}
VERSION_LINES = {
    "compiled": f"sip-policy-proxy {proxy.__version__} (compiled: mypyc)",
    "pure": f"sip-policy-proxy {proxy.__version__} (pure Python)",
}


def _expected() -> str:
    expect = os.environ.get(EXPECT_ENV)
    if expect is None:
        pytest.skip(f"{EXPECT_ENV} is not set: `make test` (compiled) and `make test-pure` set it")
    assert expect in KINDS, f"{EXPECT_ENV}={expect!r}: expected one of {sorted(KINDS)}"
    return expect


def _sources() -> list[Path]:
    return sorted(p for pkg in proxy.SANS_IO for p in (REPO / "proxy" / pkg).rglob("*.py"))


def _extensions() -> list[Path]:
    return sorted((REPO / "proxy").rglob(f"*{EXT_SUFFIX}"))


# ------------------------------------------------------------------------ the running build


def test_this_process_runs_the_expected_build() -> None:
    expect = _expected()
    assert proxy.build_kind() == KINDS[expect]
    for name in ("proxy.sip.message", "proxy.core.core"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(EXT_SUFFIX if expect == "compiled" else ".py"), (
            module.__file__)


def test_the_compiled_build_is_current() -> None:
    # `make compiled` rebuilds when a .py is newer than the extensions; a test run against an
    # older build would test code that is no longer there.
    if _expected() != "compiled":
        pytest.skip("the pure run has no compiled build to check")
    sources = _sources()
    assert sources
    newest = max(p.stat().st_mtime for p in sources)
    shared = [REPO / (proxy.SHARED_LIBRARY + EXT_SUFFIX)]
    for py in sources:
        ext = py.with_name(py.stem + EXT_SUFFIX)
        assert ext.exists(), f"{ext.relative_to(REPO)} missing: make compiled"
        assert ext.stat().st_mtime >= py.stat().st_mtime, (
            f"{ext.relative_to(REPO)} is older than its .py: make compiled")
    for lib in shared:
        assert lib.exists(), f"{lib.name} missing: make compiled"
        assert lib.stat().st_mtime >= newest, f"{lib.name} is older than the sources"
    orphans = [e.relative_to(REPO) for e in _extensions()
               if not e.with_name(e.name[: -len(EXT_SUFFIX)] + ".py").exists()]
    assert not orphans, f"extensions without a .py (make clean; make compiled): {orphans}"


# --------------------------------------------------------------------------- --version


def test_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == version_text() + "\n"
    assert re.fullmatch(r"sip-policy-proxy \S+ \((compiled: mypyc|pure Python)\)\n", out), out
    kind = proxy.build_kind()
    assert out == VERSION_LINES["compiled" if kind == proxy.COMPILED else "pure"] + "\n"


# --------------------------------------------------------------------------- make test


def test_make_test_runs_every_test_directory() -> None:
    """`make test` runs the suite in two runs (the parallel one and the serial one): a test
    directory named by neither would never run."""
    makefile = (REPO / "Makefile").read_text()
    parallel = re.search(r"pytest -q -n 2 ([^\n]+)", makefile)
    serial = re.search(r"^SERIAL_TESTS := ([^\n]+)", makefile, re.MULTILINE)
    assert parallel is not None and serial is not None
    named = set(parallel.group(1).split()) | set(serial.group(1).split())
    with_tests = {f"tests/{p.parent.relative_to(REPO / 'tests').parts[0]}"
                  for p in (REPO / "tests").rglob("test_*.py")
                  if p.parent != REPO / "tests" and "node_modules" not in p.parts}
    assert with_tests, "no test found"
    assert with_tests <= named, f"not run by make test: {sorted(with_tests - named)}"
    assert not list((REPO / "tests").glob("test_*.py")), "a test at the top of tests/"
