"""Rebuild planning: batches sealed before and not committed, collected again exactly.

After a restart, a lost assignment or a partition moving to us from another process, the
outlet re-reads Kafka from the committed offsets. The ledger says which batches were
sealed over those records (the partition's offset-commit metadata, outlet/offset_ledger.py,
whoever sealed them; batches of an older outlet in its local file, outlet/ledger.py); each
becomes a ``RebuildPlan``: the records it must collect again and its original token. The
batcher routes every record a plan covers into the plan's builder instead of the open
batch; a plan is complete once each of its partitions was read past the plan's range, and
is then sealed under its original token, so destinations that stored it drop the repeat.

A batch covers one partition, so whoever owns the partition rebuilds it whole: a plan
whose partition is revoked before it completed is dropped (the next owner plans it again
from the same commit metadata). Only a batch an older outlet sealed over several
partitions can come back in parts (``legacy``): its parts are rebuilt under its token as
before (docs/dual-write.md: the upgrade).

Pure logic: no I/O, no Trio; the batcher and the pipeline call it, tests drive it directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from outlet.batch import Ranges, RebuildPlan
from outlet.offset_ledger import Sealed


def plans_for(
    topic: str,
    committed: dict[int, int],
    sealed: Iterable[Sealed],
    legacy: Iterable[tuple[str, Ranges]],
    ids: Iterator[int],
    epoch: int,
) -> list[RebuildPlan]:
    """Plans for batches sealed past the committed offsets, in the order they were sealed.

    `sealed`: this assignment's batches from the commit metadata; `legacy`: (token, ranges
    still to rebuild, restricted to partitions we own) from an older outlet's file ledger.
    """
    plans: list[RebuildPlan] = []
    for s in sealed:
        first = max(s.first, committed.get(s.partition, s.first))
        plans.append(RebuildPlan(
            ranges={s.partition: (first, s.last)}, token=s.token(topic), sealed_at=s.sealed_at,
            seq=next(ids), epoch=epoch,
        ))
    for token, left in legacy:
        plans.append(RebuildPlan(ranges=left, token=token, legacy=True, seq=next(ids),
                                 epoch=epoch))
    return plans


class Rebuilds:
    """The open rebuild plans and the partitions they may still receive records of."""

    def __init__(self) -> None:
        self.plans: list[RebuildPlan] = []
        self.assigned: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.plans)

    def partitions(self) -> set[int]:
        """Partitions with an open plan (their records take the slow path)."""
        return {p for plan in self.plans for p in plan.ranges}

    def assign(self, partitions: set[int], plans: Iterable[RebuildPlan]) -> None:
        """Partitions assigned (with the plans made for them): plans open. A partition
        assigned again without a revoke first is read again from its commit, in the new
        assignment: the plans of the old one go (the new plans rebuild the same batches
        under the same tokens; kept, an old plan would collect its records twice and be
        cut in an assignment that ended, never to settle). A legacy batch planned twice is
        kept once."""
        self.assigned |= partitions
        self.plans = [p for p in self.plans if p.legacy or not partitions & p.ranges.keys()]
        active = {p.token for p in self.plans}
        for plan in plans:
            if plan.token not in active:
                self.plans.append(plan)
                active.add(plan.token)

    def revoke(self, partitions: set[int]) -> list[RebuildPlan]:
        """Partitions went: their plans are dropped (the next owner rebuilds them whole);
        returns the legacy plans now complete (their other partitions were all read)."""
        self.assigned -= partitions
        self.plans = [
            p for p in self.plans if p.legacy or not partitions & p.ranges.keys()
        ]
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
