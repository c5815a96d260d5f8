"""The docker-compose profile "cluster": two proxies, one Redis and Asterisk, configured to
act as one (README "Running several proxies"). Checked without a Docker engine."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from proxy.config import load_config

REPO = Path(__file__).resolve().parents[2]


def compose_config() -> dict[str, object]:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose not on PATH: `make test` installs Debian's package")
    done = subprocess.run([exe, "-f", str(REPO / "docker-compose.yml"), "--profile", "cluster",
                           "config"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    loaded = yaml.safe_load(done.stdout)
    assert isinstance(loaded, dict)
    return loaded


def test_cluster_profile_has_two_proxies_one_redis_and_asterisk() -> None:
    services = compose_config()["services"]
    assert isinstance(services, dict)
    assert {"proxy-a", "proxy-b", "redis", "asterisk"} <= set(services)


@pytest.mark.parametrize("name", ["a", "b"])
def test_cluster_nodes_share_redis_and_secret_with_their_own_names(name: str) -> None:
    config, _ = load_config(REPO / "docker" / "cluster" / f"proxy-{name}.yaml")
    other, _ = load_config(REPO / "docker" / "cluster" / f"proxy-{'b' if name == 'a' else 'a'}.yaml")
    assert config.state == other.state == "redis://172.30.60.30:6379/0"
    assert config.secret == other.secret and config.secret
    assert config.node == f"edge-{name}" != other.node
    asterisk = (REPO / "docker" / "asterisk" / "pjsip.conf").read_text()
    assert config.listen[0].host in asterisk, "Asterisk does not identify this node"
