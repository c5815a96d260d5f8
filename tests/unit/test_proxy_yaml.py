"""The shipped proxy.yaml lists every key the loader accepts, each at its real default (issue:
it showed `drain_timeout: 5` where the default is 30, said `redis://` was not available, and
left out `http`, `log_format`, `upstream_probe` and `node`).

The file's convention: a commented-out `# key: value` shows the key at its default; a line
whose comment starts with "e.g." shows an example (no default, or a computed one). So:
uncommenting a default line must change nothing, and every example must load.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import pytest

from proxy.config import Config, load_config
from proxy.config.model import (
    AUTH_KEYS,
    CONFIG_KEYS,
    DNS_KEYS,
    HEP_KEYS,
    LIMIT_KEYS,
    PROBE_KEYS,
    REDIRECT_KEYS,
    REDIS_SCHEMES,
    TIMER_KEYS,
    TLS_KEYS,
)

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "proxy.yaml"
SECTIONS = {"redirects": REDIRECT_KEYS, "auth": AUTH_KEYS, "limits": LIMIT_KEYS,
            "timers": TIMER_KEYS, "tls": TLS_KEYS, "upstream_probe": PROBE_KEYS,
            "dns": DNS_KEYS, "hep": HEP_KEYS}
LISTEN = "listen: [udp:127.0.0.1:5060]\n"

TOP = re.compile(r"^(?P<c># )?(?P<key>[a-z][a-z0-9_]*):(?P<rest>\s.*)?$")
SUB = re.compile(r"^(?P<c>#)?(?P<indent> {2,4})(?P<key>[a-z][a-z0-9_]*):(?P<rest>\s.*)?$")
CONTINUED = re.compile(r"^#\s{3,}#")  # a comment continued under the one of a key line


@dataclasses.dataclass(frozen=True)
class Entry:
    path: tuple[str, ...]  # ("drain_timeout",) or ("limits", "max_headers")
    value: str  # as written, without the trailing comment ("" for a section header)
    commented: bool
    example: bool  # the trailing comment starts with "e.g."
    line: int


def entries(text: str) -> list[Entry]:
    found: list[Entry] = []
    section: str | None = None
    commented_section = False  # a section's keys are commented out as its header is
    for n, line in enumerate(text.splitlines(), 1):
        m = TOP.match(line)
        if m is None and section is not None:
            sub = SUB.match(line)
            if sub is not None and bool(sub["c"]) == commented_section:
                found.append(entry((section, sub["key"]), sub, n))
                continue
            if CONTINUED.match(line):
                continue
        section = None
        if m is None:
            continue
        e = entry((m["key"],), m, n)
        found.append(e)
        if not e.value:
            section, commented_section = m["key"], e.commented
    return found


def entry(path: tuple[str, ...], m: re.Match[str], n: int) -> Entry:
    value, _, comment = (m["rest"] or "").partition("  #")
    if value.lstrip().startswith("#"):  # `key:   # comment` (a section header)
        value, comment = "", value.lstrip()[1:]
    return Entry(path, value.strip(), bool(m["c"]), comment.strip().startswith("e.g."), n)


SHOWN = entries(SHIPPED.read_text())


def test_every_accepted_key_is_in_the_shipped_file_once() -> None:
    accepted = {(k,) for k in CONFIG_KEYS} | {(s, k) for s, ks in SECTIONS.items() for k in ks}
    shown = [e.path for e in SHOWN]
    assert sorted(set(shown) - accepted) == [], "keys shown that the loader does not accept"
    assert sorted(accepted - set(shown)) == [], "keys the loader accepts missing from proxy.yaml"
    assert len(shown) == len(set(shown)), [p for p in shown if shown.count(p) > 1]


def test_the_file_parses_into_what_it_shows() -> None:
    """The parser of this test reads what it should: the keys it finds, in order."""
    keys = [e.path for e in SHOWN if len(e.path) == 1]
    assert keys[:3] == [("listen",), ("upstreams",), ("policy",)]
    assert Entry(("drain_timeout",), "30", True, False, next(
        e.line for e in SHOWN if e.path == ("drain_timeout",))) in SHOWN
    assert next(e for e in SHOWN if e.path == ("http",)).example


def folder(tmp_path: Path) -> Path:
    """The files the shown values name, relative to the config (policy, users, certificates)."""
    (tmp_path / "policies").mkdir()
    shutil.copy(REPO / "policies" / "default.yaml", tmp_path / "policies" / "default.yaml")
    (tmp_path / "users.yaml").write_text("alice: {password: secret}\n")
    (tmp_path / "certs").mkdir()
    for name in ("proxy.pem", "proxy.key", "ca.pem"):
        (tmp_path / "certs" / name).write_text("not read by the loader\n")
    return tmp_path


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "proxy.yaml"
    path.write_text(text)
    config, _ = load_config(path)
    return config


TOP_DEFAULTS = [e for e in SHOWN if len(e.path) == 1 and e.commented and e.value
                and not e.example]


@pytest.mark.parametrize("e", TOP_DEFAULTS, ids=lambda e: e.path[0])
def test_each_default_shown_is_the_real_default(tmp_path: Path, e: Entry) -> None:
    folder(tmp_path)
    without = load(tmp_path, LISTEN)
    with_it = load(tmp_path, LISTEN + f"{e.path[0]}: {e.value}\n")
    assert with_it == without, f"proxy.yaml:{e.line}: {e.path[0]}: {e.value} is not the default"


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_each_default_shown_in_a_section_is_the_real_default(tmp_path: Path, section: str
                                                              ) -> None:
    """The section as shown loads; leaving out any of its default lines changes nothing."""
    folder(tmp_path)
    lines = [e for e in SHOWN if e.path[0] == section and len(e.path) == 2]

    def text(skip: Entry | None) -> str:
        body = "".join(f"  {e.path[1]}: {e.value}\n" for e in lines if e is not skip)
        return LISTEN + f"{section}:\n{body}"

    shown = load(tmp_path, text(None))
    for e in lines:
        if e.example:
            continue
        assert load(tmp_path, text(e)) == shown, (
            f"proxy.yaml:{e.line}: {section}: {e.path[1]}: {e.value} is not the default")
    if not any(e.example for e in lines):  # all defaults: the same as no section at all
        assert shown == load(tmp_path, LISTEN)


@pytest.mark.parametrize("e", [e for e in SHOWN if len(e.path) == 1 and e.example],
                         ids=lambda e: e.path[0])
def test_each_example_shown_loads(tmp_path: Path, e: Entry) -> None:
    folder(tmp_path)
    load(tmp_path, LISTEN + f"{e.path[0]}: {e.value}\n")


def test_the_drain_timeout_shown_is_30_and_every_state_form_is_offered() -> None:
    """The two mistakes of the issue, by name."""
    assert next(e for e in SHOWN if e.path == ("drain_timeout",)).value == "30"
    text = SHIPPED.read_text()
    assert "not available" not in text
    for form in ("memory:", "sqlite:PATH", *(f"{s}://" for s in REDIS_SCHEMES)):
        assert form in text, form
