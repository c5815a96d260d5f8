"""``workers: N | auto`` in proxy.yaml (README "Workers"): the values accepted, the
FILE:LINE:COLUMN errors for the others, and the checks against the state store and the HTTP
port."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from proxy.config import load_config
from proxy.config.workers import MAX_WORKERS, cores
from proxy.diagnostics import ConfigError

LISTEN = "listen: [udp:127.0.0.1:5060]\n"
REDIS = 'state: "redis://127.0.0.1:6379/0"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proxy.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return [str(d).replace(str(tmp_path) + "/", "") for d in info.value.diagnostics]


def warnings(tmp_path: Path, text: str) -> list[str]:
    _, found = load_config(write(tmp_path, text))
    return [str(d).replace(str(tmp_path) + "/", "") for d in found]


def test_default_is_one_worker(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, LISTEN))
    assert config.workers == 1


@pytest.mark.parametrize("value", [1, 2, 8, MAX_WORKERS])
def test_a_count(tmp_path: Path, value: int) -> None:
    config, _ = load_config(write(tmp_path, LISTEN + REDIS + f"workers: {value}\n"))
    assert config.workers == value


@pytest.mark.parametrize("text", ["auto", "AUTO", '"auto"'])
def test_auto_is_the_cores_this_process_may_use(tmp_path: Path, text: str) -> None:
    config, _ = load_config(write(tmp_path, LISTEN + REDIS + f"workers: {text}\n"))
    assert config.workers == min(cores(), MAX_WORKERS) >= 1


@pytest.mark.parametrize(("value", "message"), [
    ("0", f"proxy.yaml:2:10: workers must be between 1 and {MAX_WORKERS}, got 0"),
    ("-3", f"proxy.yaml:2:10: workers must be between 1 and {MAX_WORKERS}, got -3"),
    ("1000", f"proxy.yaml:2:10: workers must be between 1 and {MAX_WORKERS}, got 1000"),
    ("2.5", "proxy.yaml:2:10: workers must be an integer, got the number 2.5; "
            "e.g. workers: 4"),
    ("many", f"proxy.yaml:2:10: workers must be an integer between 1 and {MAX_WORKERS} or "
             "'auto', got 'many'; e.g. workers: 4"),
    ("true", "proxy.yaml:2:10: workers must be an integer, got the boolean true; "
             "e.g. workers: 4"),
])
def test_bad_values_are_positioned_errors(tmp_path: Path, value: str, message: str) -> None:
    assert errors(tmp_path, LISTEN + f"workers: {value}\n") == [message]


def test_sqlite_with_several_workers_is_refused(tmp_path: Path) -> None:
    found = errors(tmp_path, LISTEN + "state: sqlite:state.db\nworkers: 2\n")
    assert len(found) == 1
    assert found[0].startswith("proxy.yaml:3:10: workers: 2 needs state: memory: or a Redis")


def test_sqlite_with_one_worker_is_fine(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, LISTEN + "state: sqlite:state.db\nworkers: 1\n"))
    assert config.workers == 1


def test_memory_with_a_local_registrar_warns(tmp_path: Path) -> None:
    said = warnings(tmp_path, LISTEN + "registrar: local\nupstreams: [sip:127.0.0.1:5070]\n"
                    "workers: 2\n")
    assert any(w.startswith("proxy.yaml:4:10: warning: workers: 2 with state: memory:")
               for w in said), said


def test_redis_with_a_local_registrar_does_not_warn(tmp_path: Path) -> None:
    said = warnings(tmp_path, LISTEN + REDIS + "registrar: local\n"
                    "upstreams: [sip:127.0.0.1:5070]\nworkers: 2\n")
    assert not [w for w in said if "workers" in str(w)], said


def test_http_ports_of_every_worker_must_exist(tmp_path: Path) -> None:
    found = errors(tmp_path, LISTEN + REDIS + 'http: "127.0.0.1:65535"\nworkers: 2\n')
    assert found == ["proxy.yaml:3:7: http port 65535: worker 1 would serve HTTP on port "
                     "65536, above 65535 (each worker serves on the http port plus its index)"]


def test_the_spread_is_by_source_unless_told_call(tmp_path: Path) -> None:
    config, _ = load_config(write(tmp_path, LISTEN + REDIS + "workers: 2\n"))
    assert config.workers_spread == "source"
    config, said = load_config(write(tmp_path, LISTEN + REDIS + "workers: 2\n"
                                     "workers_spread: call\n"))
    assert config.workers_spread == "call"
    assert not [w for w in said if "workers" in str(w)], said


def test_a_bad_spread_is_a_positioned_error(tmp_path: Path) -> None:
    assert errors(tmp_path, LISTEN + "workers_spread: random\n") == [
        "proxy.yaml:2:17: workers_spread must be one of source, call; got 'random'; "
        "e.g. workers_spread: call"]


def test_the_call_spread_with_one_worker_warns(tmp_path: Path) -> None:
    said = warnings(tmp_path, LISTEN + "workers_spread: call\n")
    assert [w for w in said if "workers" in w] == [
        "proxy.yaml:2:17: warning: workers_spread: call has no effect with one worker "
        "(workers: N spreads the calls among N processes)"]
