"""The transaction table (proxy/core/table.py) owns matching, and the server transaction is
the gatekeeper of every response the core sends (RFC 3261 17.2.2; issue 20)."""

from __future__ import annotations

import ast
from pathlib import Path

from proxy.core import txns
from proxy.core.effects import WARNING, LogLine, Out
from proxy.sip import make_response, parse_message
from proxy.transaction import TransactionState
from tests.unit.core_harness import CALLER, Harness, request, statuses

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_final_on_a_completed_transaction_is_refused_counted_logged_never_sent() -> None:
    """RFC 3261 17.2.2: once a final response went out the server transaction is Completed
    and takes no other final; the core asks it first and sends nothing it refuses."""
    h = Harness.make()
    h.feed(request())
    [entry] = [e for e in h.core.table.servers() if e.ctx is not None]
    msg = parse_message(request())
    first, second = Out(), Out()
    txns.send_response(h.core, entry, 486, make_response(msg, 486, to_tag="t1"), 1.0, first)
    assert statuses(h.to(CALLER.port, first.sends)) == [486]
    assert entry.txn.state is TransactionState.COMPLETED
    txns.send_response(h.core, entry, 500, make_response(msg, 500, to_tag="t1"), 1.1, second)
    assert second.sends == []
    assert h.core.stats["responses_refused"] == 1
    [line] = [r for r in second.logs if isinstance(r, LogLine)]
    assert line.level == WARNING and 500 in line.args
    # The first final is still what a retransmitted INVITE gets (17.2.1).
    assert statuses(h.to(CALLER.port, h.feed(request()))) == [486]


def test_a_response_matches_its_branch_by_branch_and_method_only() -> None:
    """RFC 3261 17.1.3: the top Via branch and the CSeq method; the CANCEL of a branch is
    the same branch with the method CANCEL."""
    h = Harness.make()
    h.feed(request())
    [entry] = [e for e in h.core.table.servers() if e.ctx is not None]
    assert entry.ctx is not None
    [br] = entry.ctx.branches
    table = h.core.table
    assert table.match_branch(br.branch_id, "INVITE") is br
    assert table.match_branch(br.branch_id, "BYE") is None
    assert table.match_branch(br.branch_id, "CANCEL") is None
    assert table.match_branch(None, "INVITE") is None and table.match_branch("", "INVITE") is None
    table.add_cancel(br)
    assert table.match_branch(br.branch_id, "CANCEL") is br
    assert len(table) == table.server_count + table.client_count == 3


def _key_builders(path: Path) -> list[str]:
    """Lines of ``path`` that join a branch and something else with ``"|"`` into a string
    that is not hashed (``.encode(...)``, the input of a MAC or checksum): a matching key."""
    tree = ast.parse(path.read_text(), str(path))
    hashed = {id(n.value) for n in ast.walk(tree)
              if isinstance(n, ast.Attribute) and n.attr == "encode"}
    found = []
    for node in ast.walk(tree):
        if id(node) in hashed:
            continue
        if isinstance(node, ast.JoinedStr):
            literal = "".join(v.value for v in node.values
                              if isinstance(v, ast.Constant) and isinstance(v.value, str))
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            literal = "".join(v.value for v in (node.left, node.right)
                              if isinstance(v, ast.Constant) and isinstance(v.value, str))
        else:
            continue
        code = ast.unparse(node)
        if "|" in literal and ("branch" in code or "bid" in code):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {code}")
    return found


def test_transaction_keys_are_built_in_the_table_only() -> None:
    """Kamailio's t_lookup: one module builds the keys and reads and writes the tables."""
    core = ROOT / "proxy" / "core"
    builders = [line for p in sorted(core.rglob("*.py")) if p.name != "table.py"
                for line in _key_builders(p)]
    assert builders == []
    assert _key_builders(core / "table.py")  # the check sees the table's own keys
    for p in sorted((ROOT / "proxy").rglob("*.py")):
        if p.name == "table.py":
            continue
        text = p.read_text()
        assert "table._server" not in text and "table._client" not in text, p
