"""``sip-policy-proxy registrations list [--json] | remove AOR`` against sqlite: the bindings
(RFC 3261 10.3, RFC 5626) in the state store. The same tests against a real redis-server:
tests/system/test_cli_registrations_redis.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.store import StoredBinding
from tests.unit.test_cli_routes import store_call, write_config

FUTURE = 4_102_444_800.0  # 2100-01-01T00:00:00Z
NOW = time.time()


def b(aor: str, contact: str, *, node: str = "edge-1", reg_id: int | None = None
      ) -> StoredBinding:
    return StoredBinding(
        aor=aor, key=contact if reg_id is None else f"urn:uuid:9|{reg_id}",
        contact=f"<{contact}>", uri=contact, expires_at=FUTURE, q=0.5, call_id="c@x", cseq=7,
        flow_transport="tcp" if reg_id else "udp", flow_host="192.0.2.20", flow_port=5062,
        registered_at=NOW, instance="urn:uuid:9" if reg_id else None, reg_id=reg_id, node=node)


ALICE = b("alice@example.com", "sip:alice@192.0.2.20:5062")
BOB = b("bob@example.com", "sip:bob@192.0.2.30", reg_id=1, node="edge-2")


def seeded(path: Path) -> Path:
    for binding in (ALICE, BOB):
        store_call(path, "put_binding", binding)
    return path


@pytest.fixture(params=["sqlite"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return seeded(write_config(tmp_path))


def test_list_prints_a_table(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registrations", "list", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["AOR", "CONTACT", "EXPIRES", "AT", "(UTC)", "Q", "FLOW", "NODE"]
    assert lines[1].split() == ["alice@example.com", "<sip:alice@192.0.2.20:5062>",
                                "2100-01-01T00:00:00Z", "0.5", "udp:192.0.2.20:5062", "edge-1"]
    assert lines[2].split()[0] == "bob@example.com" and lines[2].split()[-1] == "edge-2"


def test_list_json_for_scripts(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registrations", "list", "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["aor"] for d in data] == ["alice@example.com", "bob@example.com"]
    assert data[1]["instance"] == "urn:uuid:9" and data[1]["reg_id"] == 1
    assert data[1]["flow"] == {"transport": "tcp", "host": "192.0.2.20", "port": 5062}
    assert data[0]["expires_at"] == "2100-01-01T00:00:00Z"


def test_remove_takes_the_aor_as_a_sip_uri(config: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registrations", "remove", "sip:alice@example.com", "--config",
                 str(config)]) == 0
    assert capsys.readouterr().out == "removed the registrations of alice@example.com\n"
    left = store_call(config, "list_bindings", time.time())
    assert left == [BOB]
    assert main(["registrations", "remove", "sip:alice@example.com", "--config",
                 str(config)]) == 1
    assert capsys.readouterr().err == "no registration for sip:alice@example.com\n"


def test_memory_state_has_no_registrations(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "memory:")
    assert main(["registrations", "list", "--config", str(path)]) == 1
    assert "nothing is persisted" in capsys.readouterr().err
