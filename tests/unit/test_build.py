"""The compiled build (README "Compiled build"): which one runs, and that it is not stale.

``make test`` runs the suite with ``SIP_POLICY_PROXY_EXPECT=compiled`` (after ``make
compiled``), ``make test-pure`` with ``SIP_POLICY_PROXY_EXPECT=pure`` and
``SIP_POLICY_PROXY_PURE=1``: the build this process and the proxies the tests spawn run must
be that one, so a compiled run that silently ran the .py files (or the reverse) fails.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
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


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def _spawn_env(pure: bool | None = None) -> dict[str, str]:
    """The environment the e2e harness gives a proxy (tests/e2e/harness.py): this one, with
    the checkout on PYTHONPATH; ``pure`` sets (True) or removes (False) SIP_POLICY_PROXY_PURE."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if pure is True:
        env[proxy.PURE_ENV] = "1"
    elif pure is False:
        env.pop(proxy.PURE_ENV, None)
    return env


# ------------------------------------------------------------------------ the running build


def test_this_process_runs_the_expected_build() -> None:
    expect = _expected()
    assert proxy.build_kind() == KINDS[expect]
    for name in ("proxy.sip.message", "proxy.core.proxy"):
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(EXT_SUFFIX if expect == "compiled" else ".py"), (
            module.__file__)


def test_a_spawned_proxy_runs_the_expected_build(tmp_path: Path) -> None:
    # As the e2e tests start proxies: `sys.executable -m proxy`, this environment.
    expect = _expected()
    done = _run([sys.executable, "-m", "proxy", "--version"], _spawn_env(), tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == VERSION_LINES[expect] + "\n"


def test_the_venv_entry_point_runs_the_expected_build(tmp_path: Path) -> None:
    # The console script of the editable install, away from the checkout and without
    # PYTHONPATH: the compiled modules must find their shared library all the same.
    expect = _expected()
    exe = Path(sys.executable).parent / "sip-policy-proxy"
    assert exe.exists(), f"{exe} is missing: run make venv"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = _run([str(exe), "--version"], env, tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == VERSION_LINES[expect] + "\n"


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


# ---------------------------------------------------------------- one tree, either build


@pytest.fixture
def built_tree(tmp_path: Path) -> Path:
    """A copy of the checkout's package, setup.py and compiled build, with every extension
    newer than every .py: a current in-place build, whatever the checkout's own state (an edit
    since `make compiled` does not matter here)."""
    if not _extensions():
        pytest.skip("no extension in the tree (`make compiled` builds them)")
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "proxy", tree / "proxy", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "setup.py", tree / "setup.py")
    shutil.copy2(REPO / (proxy.SHARED_LIBRARY + EXT_SUFFIX), tree)
    sources, built = tree.rglob("*.py"), tree.rglob(f"*{EXT_SUFFIX}")
    then = (REPO / "setup.py").stat().st_mtime
    for path in sources:
        os.utime(path, (then, then))
    for path in built:
        os.utime(path, (then + 1, then + 1))
    return tree


PROBE = ("import proxy, proxy.sip.uri as m, proxy.core.proxy as p; "
         "print(proxy.build_kind()); print(m.__file__); print(p.__file__)")


def _probe(tree: Path, pure: bool) -> subprocess.CompletedProcess[str]:
    env = _spawn_env(pure=pure)
    env["PYTHONPATH"] = str(tree)
    return _run([sys.executable, "-c", PROBE], env, tree.parent)


def test_pure_env_ignores_the_extensions_present(built_tree: Path) -> None:
    compiled = _probe(built_tree, pure=False)
    assert (compiled.returncode, compiled.stderr) == (0, "")
    assert compiled.stdout.splitlines() == [
        proxy.COMPILED, str(built_tree / f"proxy/sip/uri{EXT_SUFFIX}"),
        str(built_tree / f"proxy/core/proxy{EXT_SUFFIX}")]
    pure = _probe(built_tree, pure=True)
    assert (pure.returncode, pure.stderr) == (0, "")
    assert pure.stdout.splitlines() == [
        proxy.PURE, str(built_tree / "proxy/sip/uri.py"), str(built_tree / "proxy/core/proxy.py")]
    env = _spawn_env(pure=True)
    env["PYTHONPATH"] = str(built_tree)
    version = _run([sys.executable, "-m", "proxy", "--version"], env, built_tree.parent)
    assert (version.stdout, version.stderr) == (VERSION_LINES["pure"] + "\n", "")


def test_a_stale_in_place_build_is_not_run(built_tree: Path) -> None:
    # An edit after the build: the process runs the .py files rather than code that is no
    # longer there, and says why when asked (build_kind, --version).
    edited = built_tree / "proxy/sip/uri.py"
    later = (built_tree / f"proxy/sip/uri{EXT_SUFFIX}").stat().st_mtime + 1
    os.utime(edited, (later, later))
    stale = _probe(built_tree, pure=False)
    assert (stale.returncode, stale.stderr) == (0, "")
    why = f"{proxy.PURE}, not the compiled build: proxy/sip/uri.py is newer (make compiled)"
    assert stale.stdout.splitlines() == [why, str(edited), str(built_tree / "proxy/core/proxy.py")]
    env = _spawn_env(pure=False)
    env["PYTHONPATH"] = str(built_tree)
    version = _run([sys.executable, "-m", "proxy", "--version"], env, built_tree.parent)
    assert (version.stdout, version.stderr) == (
        f"sip-policy-proxy {proxy.__version__} ({why})\n", "")


# --------------------------------------------------------------------------- --version


def test_version_names_the_build(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == version_text() + "\n"
    assert re.fullmatch(r"sip-policy-proxy \S+ \((compiled: mypyc|pure Python)\)\n", out), out
    kind = proxy.build_kind()
    assert out == VERSION_LINES["compiled" if kind == proxy.COMPILED else "pure"] + "\n"
