"""The compiled build (README "Compiled build") in other processes: a proxy spawned as the e2e
tests spawn it and the venv's entry point run the build the suite expects
(``SIP_POLICY_PROXY_EXPECT``, set by ``make test`` and ``make test-pure``), and in a copy of
the tree ``SIP_POLICY_PROXY_PURE=1`` runs the .py files while a stale extension is never run.
What this process runs is checked by tests/unit/test_build.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import proxy
from tests.unit.test_build import EXT_SUFFIX, REPO, VERSION_LINES, _expected, _extensions


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


PROBE = ("import proxy, proxy.sip.uri as m, proxy.core.core as p; "
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
        str(built_tree / f"proxy/core/core{EXT_SUFFIX}")]
    pure = _probe(built_tree, pure=True)
    assert (pure.returncode, pure.stderr) == (0, "")
    assert pure.stdout.splitlines() == [
        proxy.PURE, str(built_tree / "proxy/sip/uri.py"), str(built_tree / "proxy/core/core.py")]
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
    assert stale.stdout.splitlines() == [why, str(edited), str(built_tree / "proxy/core/core.py")]
    env = _spawn_env(pure=False)
    env["PYTHONPATH"] = str(built_tree)
    version = _run([sys.executable, "-m", "proxy", "--version"], env, built_tree.parent)
    assert (version.stdout, version.stderr) == (
        f"sip-policy-proxy {proxy.__version__} ({why})\n", "")
