"""sip-policy-proxy: a transaction-stateful SIP proxy driven by a per-status-code policy.

The sans-IO packages (proxy/sip, proxy/transaction, proxy/core, proxy/policy) may be compiled
with mypyc (setup.py): a module's C extension, when present, is imported in place of its .py.
:func:`build_kind` says which build this process runs. ``SIP_POLICY_PROXY_PURE=1`` in the
environment makes the process ignore the extensions and import the .py files, so one tree runs
either way (README, "Compiled build"). In a source tree, an in-place build older than one of
its .py files is ignored the same way, and :func:`build_kind` says why.
"""

from __future__ import annotations

import os
import sys

__version__ = "0.1.0"

#: The packages that setup.py compiles.
SANS_IO = ("sip", "transaction", "core", "policy")
PURE_ENV = "SIP_POLICY_PROXY_PURE"
COMPILED = "compiled (mypyc)"
PURE = "pure Python"
#: The compiled modules' shared library, a top-level module (setup.py's GROUP + "__mypyc").
SHARED_LIBRARY = "sip_policy_proxy__mypyc"


def _ignore_extensions() -> None:
    """Import this package's modules from source (or bytecode) only: each of its directories
    gets, before any module below it is imported, a finder without the extension loader."""
    from importlib.machinery import (
        BYTECODE_SUFFIXES,
        SOURCE_SUFFIXES,
        FileFinder,
        SourceFileLoader,
        SourcelessFileLoader,
    )

    for root in __path__:
        top = FileFinder(root, (SourceFileLoader, SOURCE_SUFFIXES),
                         (SourcelessFileLoader, BYTECODE_SUFFIXES))
        sys.path_importer_cache[root] = top
        for package in SANS_IO:
            # A subpackage's __path__ is its finder's path joined with its name (importlib).
            for directory, dirs, _ in os.walk(os.path.join(top.path, package)):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                sys.path_importer_cache[directory] = FileFinder(
                    directory, (SourceFileLoader, SOURCE_SUFFIXES),
                    (SourcelessFileLoader, BYTECODE_SUFFIXES))


def _load_shared_library() -> None:
    """Load mypyc's shared library from beside this package, where the build puts it (the
    top of site-packages, or of the source tree for an in-place build): the compiled modules
    import it by its top-level name, and a source tree's top need not be on sys.path (an
    editable install maps the ``proxy`` package only)."""
    from importlib.machinery import EXTENSION_SUFFIXES
    from importlib.util import module_from_spec, spec_from_file_location

    if SHARED_LIBRARY in sys.modules:
        return
    top = os.path.dirname(os.path.abspath(__path__[0]))
    for suffix in EXTENSION_SUFFIXES:
        path = os.path.join(top, SHARED_LIBRARY + suffix)
        spec = spec_from_file_location(SHARED_LIBRARY, path) if os.path.exists(path) else None
        if spec is not None and spec.loader is not None:
            module = module_from_spec(spec)
            sys.modules[SHARED_LIBRARY] = module
            spec.loader.exec_module(module)
            return


def _stale_extensions() -> list[str]:
    """In a source tree (setup.py beside this package: an in-place build), the .py files of the
    sans-IO packages that are newer than their extension, which would run code that is no
    longer there. (An installed package is not checked: pip does not keep the build's mtimes.)"""
    from importlib.machinery import EXTENSION_SUFFIXES

    stale: list[str] = []
    for root in __path__:
        if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(root)), "setup.py")):
            continue
        for package in SANS_IO:
            for directory, dirs, files in os.walk(os.path.join(root, package)):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for name in files:
                    if not name.endswith(".py"):
                        continue
                    source = os.path.join(directory, name)
                    try:
                        built = os.stat(source[:-3] + EXTENSION_SUFFIXES[0]).st_mtime
                    except OSError:
                        continue
                    if built < os.stat(source).st_mtime:
                        stale.append(os.path.relpath(source, os.path.dirname(root)))
    return stale


#: The .py files newer than their extension, when that made this process run pure.
_stale: list[str] = []
if os.environ.get(PURE_ENV) == "1":
    _ignore_extensions()
elif _stale := _stale_extensions():
    _ignore_extensions()
else:
    _load_shared_library()


def build_kind() -> str:
    """:data:`COMPILED` when every module of the sans-IO packages is (or, not imported yet,
    would be) loaded from a mypyc extension, :data:`PURE` when none is (with the reason when a
    stale in-place build was passed over); a mix (a broken or partial build) is named as
    such."""
    import importlib
    import importlib.machinery
    import importlib.util
    import pkgutil

    compiled, total = 0, 0
    for package in SANS_IO:
        module = importlib.import_module(f"{__name__}.{package}")
        names = [module.__name__] + [
            info.name for info in pkgutil.walk_packages(module.__path__, module.__name__ + ".")]
        for name in names:
            spec = importlib.util.find_spec(name)
            if spec is None:  # an extension without its .py, ignored (SIP_POLICY_PROXY_PURE)
                continue
            total += 1
            compiled += isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    if compiled == 0 and _stale:
        return f"{PURE}, not the compiled build: {_stale[0]} is newer (make compiled)"
    if compiled == 0:
        return PURE
    if compiled == total:
        return COMPILED
    return f"partly compiled (mypyc): {compiled} of {total} modules"
