"""The registrar and digest keys of proxy.yaml (issues 18 and 19): ``registrar_max_bindings``,
``path``, ``auth.algorithms``, and the ``registrar_networks`` default that depends on
``auth``; defaults, values, and every error and warning with FILE:LINE:COLUMN."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from proxy.config import DEFAULT_REGISTRAR_NETWORKS, Config, load_config
from proxy.diagnostics import ConfigError

BASE = "listen: [udp:127.0.0.1:5060]\nupstreams: [sip:127.0.0.1:5080]\n"
AUTH = "auth: {realm: example.com, users_file: users.yaml}\n"


def load(tmp_path: Path, text: str, users: str = "alice: {password: wonderland}\n"
         ) -> tuple[Config, list[str]]:
    (tmp_path / "users.yaml").write_text(users)
    p = tmp_path / "proxy.yaml"
    p.write_text(BASE + textwrap.dedent(text))
    config, warnings = load_config(p)
    return config, [str(w).replace(str(tmp_path), "T") for w in warnings]


def errors(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "users.yaml").write_text("alice: {password: wonderland}\n")
    p = tmp_path / "proxy.yaml"
    p.write_text(BASE + textwrap.dedent(text))
    with pytest.raises(ConfigError) as info:
        load_config(p)
    return [str(d).replace(str(tmp_path), "T") for d in info.value.diagnostics]


def test_defaults(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, AUTH)
    assert warnings == []
    assert config.registrar_max_bindings == 100_000
    assert config.path_mode == "always"
    assert config.auth is not None and config.auth.algorithms == ("SHA-256", "MD5")


def test_values(tmp_path: Path) -> None:
    config, warnings = load(tmp_path, """\
        registrar_max_bindings: 2500
        path: when_supported
        auth: {realm: example.com, users_file: users.yaml, algorithms: [md5, Sha-256]}
        """)
    assert warnings == []
    assert (config.registrar_max_bindings, config.path_mode) == (2500, "when_supported")
    assert config.auth is not None and config.auth.algorithms == ("MD5", "SHA-256")
    only_md5, _ = load(tmp_path, "auth: {realm: r, users_file: users.yaml, algorithms: [MD5]}\n")
    assert only_md5.auth is not None and only_md5.auth.algorithms == ("MD5",)


# ---- registrar_networks depends on auth -------------------------------------------------------

def test_with_auth_registrar_networks_defaults_to_none(tmp_path: Path) -> None:
    """Issue 18: with ``auth`` every REGISTER authenticates unless registrar_networks is
    written; ``registrar_networks:`` (null) is the default too."""
    assert load(tmp_path, AUTH)[0].registrar_networks == ()
    assert load(tmp_path, AUTH + "registrar_networks:\n")[0].registrar_networks == ()
    given, warnings = load(tmp_path, AUTH + "registrar_networks: [10.0.0.0/8]\n")
    assert given.registrar_networks == ("10.0.0.0/8",) and warnings == []
    empty, warnings = load(tmp_path, AUTH + "registrar_networks: []\n")
    assert empty.registrar_networks == () and warnings == []


def test_without_auth_the_private_ranges_stay_and_check_warns(tmp_path: Path) -> None:
    """Without ``auth`` the default is the loopback and private ranges; with the local
    registrar that means anyone there can register any user: a warning at ``registrar``."""
    config, warnings = load(tmp_path, "registrar: local\n")
    assert config.registrar_networks == DEFAULT_REGISTRAR_NETWORKS
    assert len(warnings) == 1 and warnings[0].startswith(
        "T/proxy.yaml:3:12: warning: registrar: local without auth: anyone on "
        "registrar_networks (by default 127.0.0.0/8, ::1, 10.0.0.0/8")
    assert "can register any user and remove its bindings" in warnings[0]
    assert "e.g. registrar_networks: [192.168.10.0/24]" in warnings[0]
    # written by the operator, or the upstream registrar (which does not use it): no warning
    assert load(tmp_path, "registrar: local\nregistrar_networks: [10.1.0.0/16]\n")[1] == []
    assert load(tmp_path, "registrar: upstream\n")[1] == []
    assert load(tmp_path, "registrar: local\n" + AUTH)[1] == []


# ---- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("registrar_max_bindings: 0", "3:25: registrar_max_bindings must be a whole number from 1 to "
     "10000000, got the integer 0; e.g. registrar_max_bindings: 100000"),
    ("registrar_max_bindings: 2.5", "3:25: registrar_max_bindings must be a whole number"),
    ("registrar_max_bindings: lots", "3:25: registrar_max_bindings must be a whole number from 1 "
     "to 10000000, got 'lots'; e.g. registrar_max_bindings: 100000"),
    ("registrar_max_bindings: true", "3:25: registrar_max_bindings must be a whole number"),
    ("registrar_max_bindings: 10000001", "3:25: registrar_max_bindings must be a whole number"),
    ("path: sometimes", "3:7: path must be always or when_supported, got 'sometimes'; e.g. "
     "path: always"),
    ("path: [always]", "3:7: path must be always or when_supported, got a list; e.g. path: "
     "always"),
    ("auth: {realm: r, users_file: users.yaml, algorithms: MD5}",
     "3:54: auth: algorithms must be a list of digest algorithms (SHA-256 and/or MD5; [MD5] for "
     "phones that give up on the first challenge they cannot answer), got 'MD5'; e.g. auth: "
     "{realm: example.com, users_file: users.yaml, algorithms: [MD5]}"),
    ("auth: {realm: r, users_file: users.yaml, algorithms: []}",
     "3:54: auth: algorithms must name at least one of SHA-256, MD5 (e.g. algorithms"),
])
def test_errors_have_positions_and_examples(tmp_path: Path, text: str, message: str) -> None:
    [error] = errors(tmp_path, text + "\n")
    assert error.startswith(f"T/proxy.yaml:{message}"), error


def test_every_bad_algorithm_is_reported_at_its_entry(tmp_path: Path) -> None:
    assert errors(tmp_path, """\
        auth:
          realm: r
          users_file: users.yaml
          algorithms:
            - SHA-1
            - MD5
            - md5
            - 256
        """) == [
        "T/proxy.yaml:7:7: auth: algorithms: 'SHA-1' is not a digest algorithm of the proxy: use "
        "SHA-256 or MD5 (e.g. algorithms: [SHA-256, MD5], or [MD5] for phones that give up on "
        "the first challenge they cannot answer)",
        "T/proxy.yaml:9:7: auth: algorithms: MD5 is listed twice (first at 8:7)",
        "T/proxy.yaml:10:7: auth: algorithms: the integer 256 is not a digest algorithm of the "
        "proxy: use SHA-256 or MD5 (e.g. algorithms: [SHA-256, MD5], or [MD5] for phones that "
        "give up on the first challenge they cannot answer)",
    ]


def test_a_user_who_cannot_answer_any_algorithm_is_a_warning(tmp_path: Path) -> None:
    """A users file with an MD5 HA1 only and ``algorithms: [SHA-256]``: that user could never
    authenticate; said at the algorithms key."""
    ha1 = hashlib.md5(b"bob:r:pw").hexdigest()
    config, warnings = load(tmp_path, "auth: {realm: r, users_file: users.yaml, "
                            "algorithms: [SHA-256]}\n", users=f"bob: {{ha1: {ha1}}}\n")
    assert config.auth is not None
    assert warnings == ["T/proxy.yaml:3:54: warning: auth: user 'bob' has credentials for MD5 "
                        "only, none of auth.algorithms [SHA-256]: it can never authenticate"]


def test_the_shipped_proxy_yaml_shows_the_keys_with_their_defaults(tmp_path: Path) -> None:
    """proxy.yaml shows registrar_max_bindings, path and auth.algorithms commented out with
    their defaults: uncommented, they load and change nothing."""
    repo = Path(__file__).resolve().parents[2]
    lines = (repo / "proxy.yaml").read_text().splitlines()
    shown = [ln[2:] for ln in lines if ln.startswith(("# registrar_max_bindings:", "# path:"))]
    assert len(shown) == 2
    config, _ = load(tmp_path, "\n".join(shown) + "\n")
    default, _ = load(tmp_path, "")
    assert (config.registrar_max_bindings, config.path_mode) == (
        default.registrar_max_bindings, default.path_mode)
    start = lines.index("# auth:")
    auth = [ln[2:] for ln in lines[start:start + 4]]
    assert auth[3].strip().startswith("algorithms:")
    with_auth, _ = load(tmp_path, "\n".join(auth) + "\n")
    assert with_auth.auth is not None and with_auth.auth.algorithms == ("SHA-256", "MD5")
