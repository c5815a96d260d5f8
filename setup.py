"""The optional compiled build; pyproject.toml holds everything else (metadata, dependencies).

Every module of the sans-IO packages (proxy/sip, proxy/transaction, proxy/core, proxy/policy)
is compiled with mypyc into a C extension, which Python imports in place of the .py beside it.
The build falls back to pure Python, with a warning, and still installs when mypyc cannot be
imported or fails, or when there is no C compiler (or no Python.h) or it fails.
``SIP_POLICY_PROXY_PURE=1`` at build time skips the compiled build. ``sip-policy-proxy
--version`` tells which build runs (README, "Compiled build").
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import sysconfig
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

HERE = Path(__file__).resolve().parent
SANS_IO = ("sip", "transaction", "core", "policy")
PURE_ENV = "SIP_POLICY_PROXY_PURE"
STARTED = time.monotonic()
# mypyc's shared library is the top-level module sip_policy_proxy__mypyc (mypyc derives the
# modules' __file__ from it being at the top); proxy/__init__.py loads it from beside proxy/.
GROUP = "sip_policy_proxy"


def warn(reason: str) -> None:
    line = "*" * 78
    print(f"{line}\nWARNING: sip-policy-proxy: {reason}.\nInstalling the pure-Python build "
          "(same behaviour, slower); `sip-policy-proxy --version` tells which one runs.\n"
          f"{line}", file=sys.stderr, flush=True)


def toolchain_problem() -> str | None:
    """Why C extensions cannot be built here (no compiler, no Python.h), or None."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    compiler = shlex.split(cc)[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} not found)"
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        return f"no Python headers ({include}/Python.h; Debian: python3-dev)"
    return None


def sources() -> list[str]:
    """The .py files to compile, relative to this directory (mypy names modules from them)."""
    return sorted(p.relative_to(HERE).as_posix()
                  for pkg in SANS_IO for p in (HERE / "proxy" / pkg).rglob("*.py"))


def compiled_extensions() -> list[Extension]:
    """mypyc's extensions, or [] (with a warning) when the compiled build is off or fails."""
    if os.environ.get(PURE_ENV) == "1":
        print(f"sip-policy-proxy: {PURE_ENV}=1: pure-Python build", file=sys.stderr)
        return []
    problem = toolchain_problem()
    if problem is not None:
        warn(problem)
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        warn(f"mypyc cannot be imported ({exc})")
        return []
    os.chdir(HERE)  # mypyc writes its C into ./build and names modules from relative paths
    # `--config-file=` keeps pyproject.toml's [tool.mypy] (for `make lint`) out of the build.
    options = ["--config-file=", "--ignore-missing-imports"]
    try:
        # One shared library for all modules (separate=False): measured faster to build than
        # a library per module (separate=True), even with two compilers in parallel. Its C in
        # one file per module (multi_file), which OptionalBuildExt compiles in parallel.
        extensions: list[Extension] = mypycify([*options, *sources()], group_name=GROUP,
                                               multi_file=True)
    except (Exception, SystemExit) as exc:  # mypyc exits on its own errors
        warn(f"mypyc failed ({exc!r})")
        return []
    return extensions


class OptionalBuildExt(build_ext):
    """build_ext that falls back to pure Python when the C build fails. All or nothing: each
    module's extension loads the shared library, so no partial build is kept."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if self.parallel is None:  # the module stubs build beside the shared library
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext: Extension) -> None:
        # setuptools compiles the C files of one extension one after the other; the shared
        # library's are many (multi_file): compile them on every core.
        compiler = self.compiler
        serial = compiler.compile
        jobs = self.parallel if isinstance(self.parallel, int) else 1

        def compile_all(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
            if jobs < 2 or len(sources) < 2:
                return serial(sources, *args, **kwargs)
            with ThreadPoolExecutor(jobs) as pool:
                parts = list(pool.map(lambda src: serial([src], *args, **kwargs), sources))
            return [obj for part in parts for obj in part]

        compiler.compile = compile_all  # type: ignore[method-assign]
        try:
            super().build_extension(ext)
        finally:
            compiler.compile = serial  # type: ignore[method-assign]

    def run(self) -> None:
        inplace = self.inplace
        try:
            super().run()
        except (CCompilerError, BaseError, OSError) as exc:
            self.inplace = inplace  # setuptools' run() clears it while building
            warn(f"the C build failed ({exc})")
            self._remove_outputs()
            self.extensions = []
            return
        print(f"sip-policy-proxy: compiled with mypyc in {time.monotonic() - STARTED:.0f} s",
              file=sys.stderr, flush=True)
        if inplace:
            # The copies keep the build's mtime; a build that had nothing to recompile (only a
            # comment changed) still makes them current: stamp them now (`make test` relies
            # on .so files newer than the .py files).
            for path in self._outputs(inplace=True):
                os.utime(path)

    def _outputs(self, inplace: bool) -> list[str]:
        build_py = self.get_finalized_command("build_py")
        found = []
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            found.append(inplace_file if inplace else regular_file)
        return found

    def _remove_outputs(self) -> None:
        paths = self._outputs(inplace=False) + (self._outputs(inplace=True) if self.inplace else [])
        for path in paths:
            if os.path.exists(path):
                os.remove(path)


kwargs: dict[str, Any] = {}
extensions = compiled_extensions()
if extensions:
    kwargs["ext_modules"] = extensions
    kwargs["cmdclass"] = {"build_ext": OptionalBuildExt}
setup(**kwargs)
