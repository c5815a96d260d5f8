"""The users file named by ``auth.users_file`` in ``proxy.yaml``: SIP digest credentials.

The proxy authenticates with HTTP Digest (RFC 3261 22.4), which needs per user only
``HA1 = H(username ":" realm ":" password)`` (RFC 2617 3.2.2.2; SHA-256 variant: RFC 8760,
RFC 7616 3.4.2). The file maps each user name to its password, or to the HA1 values already
computed so that no clear password has to be stored::

    alice:
      password: "correct horse battery staple"
    "1001":                                   # a user name as written: 1001 and 0012 are
      ha1: 0123456789abcdef0123456789abcdef   #   the users "1001" and "0012"
      ha1_sha256: 0123...(64 hex digits)

``password`` gives both HA1 values; ``ha1`` (MD5, 32 hex digits) and ``ha1_sha256``
(SHA-256, 64 hex digits) may be given alone or together, but not with ``password``. An HA1
depends on the realm: after changing ``auth.realm``, precomputed values must be computed
again. The file is read with the same positioned reader as ``proxy.yaml``, and every error is
reported at its own FILE:LINE:COLUMN.
"""

from __future__ import annotations

import re
from pathlib import Path

from proxy.core.registrar.digest import Credentials, compute_ha1
from proxy.diagnostics import Reporter, YMap, YNode, YScalar, check_keys, describe, read_yaml_file

__all__ = ["USER_KEYS", "Credentials", "compute_ha1", "load_users"]

USER_KEYS = ("password", "ha1", "ha1_sha256")
_HEX32 = re.compile(r"[0-9A-Fa-f]{32}")
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_BAD_NAME = re.compile(r"[\x00-\x20\x7f]")  # control characters and white space


def load_users(path: Path, realm: str, report: Reporter) -> tuple[Credentials, ...] | None:
    """Read the users file at ``path``; every finding goes to ``report`` (the file's own).

    Returns the credentials in file order, or None when the file has an error.
    """
    tree, _ = read_yaml_file(path, report, keys_as_written=True)
    if tree is None:
        return None
    if not isinstance(tree, YMap):
        report.error(tree, "the users file must be a mapping of user names to "
                     f"{{password: ...}} or {{ha1: ..., ha1_sha256: ...}}, got {describe(tree)}")
        return None
    if not tree.items:
        report.warning(tree, "the users file has no users: every request that needs "
                       "authentication will be refused")
    users: list[Credentials] = []
    for key, value in tree.items:
        entry = _user(key, value, realm, report)
        if entry is not None:
            users.append(entry)
    return None if report.failed else tuple(users)


def _user(key: YScalar, node: YNode, realm: str, report: Reporter) -> Credentials | None:
    name = str(key.value)
    if not name:
        report.error(key, "a user name must not be empty")
        return None
    if _BAD_NAME.search(name):
        report.error(key, f"user {name!r}: a user name must not contain white space or "
                     "control characters")
        return None
    where = f"user {name!r}"
    if not isinstance(node, YMap):
        report.error(node, f"{where} must be a mapping: {{password: ...}} or "
                     f"{{ha1: ..., ha1_sha256: ...}}, got {describe(node)}")
        return None
    found = check_keys(report, node, USER_KEYS, (), where)
    if not found:
        report.error(node, f"{where}: give password, or ha1 and/or ha1_sha256")
        return None
    if "password" in found and ("ha1" in found or "ha1_sha256" in found):
        extra = next(k for k, _ in node.items if k.value in ("ha1", "ha1_sha256"))
        report.error(extra, f"{where}: give either password or ha1/ha1_sha256, not both "
                     "(the HA1 values are computed from the password)")
        return None
    if "password" in found:
        password = _text(found["password"], f"{where}: password", report)
        if password is None:
            return None
        return Credentials(
            name,
            compute_ha1(name, realm, password, "MD5"),
            compute_ha1(name, realm, password, "SHA-256"),
        )
    md5 = sha256 = None
    ok = True
    if "ha1" in found:
        md5 = _hex(found["ha1"], _HEX32, f"{where}: ha1", "32 hex digits (MD5)", report)
        ok = md5 is not None
    if "ha1_sha256" in found:
        sha256 = _hex(found["ha1_sha256"], _HEX64, f"{where}: ha1_sha256",
                      "64 hex digits (SHA-256)", report)
        ok = ok and sha256 is not None
    return Credentials(name, md5, sha256) if ok else None


def _text(node: YNode, what: str, report: Reporter) -> str | None:
    """A scalar as written (``password: 0012`` is "0012", not the octal integer 10)."""
    if not isinstance(node, YScalar) or (node.value is None and node.plain):
        report.error(node, f"{what} must be a string, got {describe(node)}")
        return None
    if not node.text:
        report.error(node, f"{what} must not be empty")
        return None
    return node.text


def _hex(node: YNode, form: re.Pattern[str], what: str, expected: str,
         report: Reporter) -> str | None:
    if isinstance(node, YScalar) and form.fullmatch(node.text):
        return node.text.lower()
    shown = repr(node.text) if isinstance(node, YScalar) and node.text else describe(node)
    report.error(node, f"{what} must be {expected}, got {shown}")
    return None
