"""Rebuild planning: batches sealed before and not committed, collected again exactly.

After a restart or a lost assignment the outlet re-reads Kafka from the committed
offsets. The ledger (outlet/ledger.py, any ``BatchLedger``) says which batches were
sealed over those records; each becomes a ``RebuildPlan``: the records it must collect
again (its uncommitted ranges) and its original token. The batcher routes every record a
plan covers into the plan's builder instead of the open batch; a plan is complete once
each of its partitions that we still own was read past the plan's range, and is then
sealed under its original token, so destinations that stored it drop the repeat.

Pure logic: no I/O, no Trio; the batcher calls it, tests drive it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from outlet.batch import RebuildPlan
from outlet.ledger import LedgerEntry
from outlet.tokens import Ranges


class Rebuilds:
    """The open rebuild plans and the partitions they may still receive records of."""

    def __init__(self) -> None:
        self.plans: list[RebuildPlan] = []
        self.assigned: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.plans)

    def assign(
        self,
        partitions: set[int],
        pending: Iterable[tuple[LedgerEntry, Ranges]],
        ids: Iterator[int],
    ) -> list[RebuildPlan]:
        """Partitions assigned: plan (entry, ranges left) ledger entries not yet open.

        A batch already being rebuilt (a second assignment before it completed) is not
        planned twice.
        """
        self.assigned |= partitions
        active = {p.token for p in self.plans}
        added: list[RebuildPlan] = []
        for entry, left in pending:
            if entry.token in active:
                continue
            plan = RebuildPlan(ranges=left, token=entry.token, seq=next(ids))
            self.plans.append(plan)
            added.append(plan)
        return added

    def revoke(self, partitions: set[int]) -> list[RebuildPlan]:
        """Partitions revoked: their records will not come; returns plans now complete."""
        self.assigned -= partitions
        return self.take_complete()

    def route(self, partition: int, offset: int, value: bytes) -> bool:
        """Hand a record to the plans covering it; whether any did."""
        routed = False
        for plan in self.plans:
            if plan.covers(partition, offset):
                plan.builder.add(partition, offset, value)
                routed = True
            plan.note(partition, offset)
        return routed

    def take_complete(self) -> list[RebuildPlan]:
        """Remove and return the plans that will receive no more records."""
        done = [plan for plan in self.plans if plan.complete(self.assigned)]
        for plan in done:
            self.plans.remove(plan)
        return done
