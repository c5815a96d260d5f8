"""The fake clock the transaction tests share: jump from deadline to deadline."""

from __future__ import annotations

from proxy.transaction import ClientTransaction, Effect, ServerTransaction


def run_timers(
    txn: ClientTransaction | ServerTransaction, until: float
) -> list[tuple[float, list[Effect]]]:
    """Jump to each deadline up to ``until`` and fire it; log (time, effects)."""
    log: list[tuple[float, list[Effect]]] = []
    for _ in range(1000):
        deadline = txn.deadline
        if deadline is None or deadline > until:
            return log
        log.append((deadline, txn.on_timer(deadline)))
    raise AssertionError("timers never settle")
