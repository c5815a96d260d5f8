"""``sip-policy-proxy routes list | remove URI | clear``: the learned rewrites in the state store.

Routes are seeded through the store API into a sqlite state named by a proxy.yaml in
tmp_path; the command runs in-process (capsys; as a real process in
tests/system/test_cli_processes.py). What a second
store object (standing in for a running proxy) sees afterwards proves the command's writes.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.config import load_config
from proxy.store import LearnedRoute, open_store

LEARNED = 1_700_000_000.25  # 2023-11-14T22:13:20Z
FUTURE = 4_102_444_800.0  # 2100-01-01T00:00:00Z
PAST = 1_700_003_600.0  # expired long ago

ROUTES = [
    LearnedRoute("sip:alice@old.example.com", "sip:alice@new.example.com", "192.0.2.10:5060",
                 "call-1@pbx", 301, LEARNED, FUTURE),
    LearnedRoute("sip:bob@old.example.com", "sip:bob@[2001:db8::7]:5062", "[2001:db8::1]:5060",
                 "a84b4c76e66710", 302, LEARNED + 60, FUTURE - 86400),
]
EXPIRED = LearnedRoute("sip:carol@old.example.com", "sip:carol@new.example.com",
                       "192.0.2.10:5060", "call-3@pbx", 301, LEARNED, PAST)


def write_config(folder: Path, state: str = "sqlite:data/state.db", name: str = "proxy.yaml",
                 extra: str = "") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(f"""\
        listen: [udp:127.0.0.1:5060]
        upstreams: [sip:127.0.0.1:5080]
        state: {state}
        """) + extra)
    return path


def store_call(config: Path, method: str, *args: object) -> object:
    """Call one store method on a fresh store object (another process, as it were)."""
    cfg, _ = load_config(config)

    async def run() -> object:
        store = open_store(cfg.state)
        await store.open()
        try:
            return await getattr(store, method)(*args)
        finally:
            await store.close()

    return asyncio.run(run())


def seed(config: Path, *routes: LearnedRoute) -> None:
    for r in routes:
        store_call(config, "put_route", r)


def live(config: Path) -> list[str]:
    routes = store_call(config, "list_routes", time.time())
    assert isinstance(routes, list)
    return [r.old_uri for r in routes]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    seed(path, *ROUTES, EXPIRED)
    return path


# ---------------------------------------------------------------------------------------------
# list


def test_list_prints_a_table_of_unexpired_routes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "list", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.splitlines() == [
        "OLD URI                    NEW URI                     STATUS  SOURCE              "
        "CALL-ID         LEARNED AT (UTC)      EXPIRES AT (UTC)",
        "sip:alice@old.example.com  sip:alice@new.example.com   301     192.0.2.10:5060     "
        "call-1@pbx      2023-11-14T22:13:20Z  2100-01-01T00:00:00Z",
        "sip:bob@old.example.com    sip:bob@[2001:db8::7]:5062  302     [2001:db8::1]:5060  "
        "a84b4c76e66710  2023-11-14T22:14:20Z  2099-12-31T00:00:00Z",
    ]


def test_list_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "list", "--json", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert json.loads(out) == [
        {
            "old_uri": "sip:alice@old.example.com",
            "new_uri": "sip:alice@new.example.com",
            "status": 301,
            "source": "192.0.2.10:5060",
            "call_id": "call-1@pbx",
            "learned_at": "2023-11-14T22:13:20Z",
            "expires_at": "2100-01-01T00:00:00Z",
            "learned_at_unix": LEARNED,
            "expires_at_unix": FUTURE,
        },
        {
            "old_uri": "sip:bob@old.example.com",
            "new_uri": "sip:bob@[2001:db8::7]:5062",
            "status": 302,
            "source": "[2001:db8::1]:5060",
            "call_id": "a84b4c76e66710",
            "learned_at": "2023-11-14T22:14:20Z",
            "expires_at": "2099-12-31T00:00:00Z",
            "learned_at_unix": LEARNED + 60,
            "expires_at_unix": FUTURE - 86400,
        },
    ]


def test_config_may_come_before_the_action(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "--config", str(config), "list", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_config_defaults_to_proxy_yaml_in_the_working_directory(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(config.parent)
    assert main(["routes", "list", "--json"]) == 0
    assert [r["old_uri"] for r in json.loads(capsys.readouterr().out)] == [
        "sip:alice@old.example.com", "sip:bob@old.example.com"]


def test_list_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    seed(config, EXPIRED)
    assert main(["routes", "list", "--config", str(config)]) == 0
    assert main(["routes", "list", "--json", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("no learned routes\n[]\n", "")


def test_list_does_not_create_a_missing_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    assert main(["routes", "list", "--config", str(config)]) == 0
    assert main(["routes", "clear", "--config", str(config)]) == 0
    assert main(["routes", "remove", "sip:x@example.com", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == "no learned routes\nremoved 0 learned routes\n"
    assert err == "no learned route for sip:x@example.com\n"
    assert not (tmp_path / "data").exists()


def test_list_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Stored values came from the network: they must not drive the operator's terminal."""
    config = write_config(tmp_path)
    seed(config, LearnedRoute("sip:a@x.example.com", "sip:a@y.example.com", "192.0.2.1:5060",
                              "evil\x1b[2J\x07", 301, LEARNED, FUTURE))
    assert main(["routes", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\x07" in out


# ---------------------------------------------------------------------------------------------
# remove


def test_remove_a_route(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = store_call(config, "generation")
    assert isinstance(before, int)
    assert main(["routes", "remove", "sip:alice@old.example.com", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert (out, err) == ("removed the learned route for sip:alice@old.example.com\n", "")
    assert live(config) == ["sip:bob@old.example.com"]
    generation = store_call(config, "generation")
    assert isinstance(generation, int) and generation > before  # a running proxy notices


def test_remove_an_unknown_route_exits_1(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "remove", "sip:nobody@old.example.com", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert (out, err) == ("", "no learned route for sip:nobody@old.example.com\n")
    assert live(config) == ["sip:alice@old.example.com", "sip:bob@old.example.com"]


def test_remove_twice(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["routes", "remove", "sip:bob@old.example.com", "--config", str(config)]
    assert main(args) == 0
    assert main(args) == 1
    assert capsys.readouterr().err == "no learned route for sip:bob@old.example.com\n"


@pytest.mark.parametrize(
    "given", ["<sip:alice@old.example.com>", "SIP:alice@OLD.Example.com", " sip:alice@old.example.com "]
)
def test_remove_accepts_the_uri_as_written_elsewhere(
    config: Path, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["routes", "remove", given, "--config", str(config)]) == 0
    assert capsys.readouterr().out == "removed the learned route for sip:alice@old.example.com\n"
    assert live(config) == ["sip:bob@old.example.com"]


def test_remove_does_not_fold_the_user_part(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """User parts are case-sensitive (RFC 3261 19.1.4): ALICE is another user."""
    assert main(["routes", "remove", "sip:ALICE@old.example.com", "--config", str(config)]) == 1
    assert live(config) == ["sip:alice@old.example.com", "sip:bob@old.example.com"]
    capsys.readouterr()


def test_remove_an_expired_route(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An expired row still in the store is removed (and said so), as the store reports it."""
    assert main(["routes", "remove", EXPIRED.old_uri, "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"removed the learned route for {EXPIRED.old_uri}\n"


# ---------------------------------------------------------------------------------------------
# clear


def test_clear(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["routes", "clear", "--config", str(config)]) == 0
    assert main(["routes", "clear", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out == "removed 3 learned routes\nremoved 0 learned routes\n"
    assert err == ""
    assert live(config) == []


def test_clear_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path)
    seed(config, ROUTES[0])
    assert main(["routes", "clear", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "removed 1 learned route\n"


# ---------------------------------------------------------------------------------------------
# what cannot work


@pytest.mark.parametrize("action", [["list"], ["list", "--json"], ["remove", "sip:a@b"], ["clear"]])
@pytest.mark.parametrize("state", ["memory:", None])
def test_memory_state_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: list[str], state: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    if state is None:  # no state key: memory: by default
        (tmp_path / "proxy.yaml").write_text(
            "listen: [udp:127.0.0.1:5060]\nupstreams: [sip:127.0.0.1:5080]\n")
    else:
        write_config(tmp_path, state)
    assert main(["routes", *action]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "proxy.yaml: state is memory: nothing is persisted; use sqlite: or redis://\n"


def test_invalid_config_prints_its_diagnostics(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_config(tmp_path, extra="bogus: 1\n")
    assert main(["routes", "list"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("proxy.yaml:4:1: unknown key 'bogus'")


def test_missing_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["routes", "list"]) == 1
    assert capsys.readouterr().err == "proxy.yaml:1:1: cannot read: No such file or directory\n"


def test_a_damaged_store_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "state.db").write_bytes(b"this is not an sqlite database" * 100)
    assert main(["routes", "list", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: sqlite state store ")
    assert "damaged or is not an SQLite database" in err


def test_an_unavailable_backend_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Port 1: nothing listens there, should a redis backend try to connect.
    config = write_config(tmp_path, "redis://127.0.0.1:1/0")
    assert main(["routes", "list", "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() != ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["routes"], "the following arguments are required: ACTION"),
        (["routes", "purge"], "invalid choice: 'purge'"),
        (["routes", "remove"], "the following arguments are required: URI"),
        (["routes", "clear", "--json"], "unrecognized arguments: --json"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_help_mentions_routes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "routes" in capsys.readouterr().out
    assert main(["routes", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(action in out for action in ("list", "remove", "clear"))
