"""What every harness run shares: the stack (reused or started), fresh names, clean tables.

The chaos runner, the load and capacity harnesses, the benchmarks and the demo all go
through these, so a run never sees another run's records, offsets or tokens.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from teststack import stack as stk
from teststack import verify
from teststack.outlet_proc import apply_schema, outlet_config, write_config
from teststack.stack import Endpoints


class HarnessError(RuntimeError):
    """A harness run could not be carried out (not an invariant violation)."""


def reuse_or_start(stack_dir: str | Path) -> tuple[Endpoints, bool]:
    """A healthy stack in ``stack_dir``, or one started there; (endpoints, started here)."""
    sdir = Path(stack_dir).resolve()
    if stk.is_healthy(sdir, stk.SINGLE_DC):
        return Endpoints.load(sdir), False
    print(f"starting the stack in {sdir} ...", flush=True)
    try:
        return stk.start_stack(sdir), True
    except stk.StackError as e:
        raise HarnessError(f"stack start failed: {e}\n{e.log_tail(30)}") from None


def reuse_or_start_multi_dc(stack_dir: str | Path) -> tuple[stk.MultiDCEndpoints, bool]:
    """:func:`reuse_or_start` for the multi-dc stack (``chaos stack up --topology multi-dc``)."""
    sdir = Path(stack_dir).resolve()
    if stk.is_healthy(sdir, stk.MULTI_DC):
        return stk.MultiDCEndpoints.load(sdir), False
    print(f"starting the multi-dc stack in {sdir} ...", flush=True)
    try:
        return stk.start_multi_dc_stack(sdir), True
    except stk.StackError as e:
        raise HarnessError(f"stack start failed: {e}\n{e.log_tail(30)}") from None


@contextlib.contextmanager
def stack_for_run(stack_dir: str | Path, keep: bool = False) -> Iterator[Endpoints]:
    """:func:`reuse_or_start`; a stack started here is stopped at the end unless ``keep``."""
    ep, started = reuse_or_start(stack_dir)
    try:
        yield ep
    finally:
        if started and not keep:
            stk.stop_stack(Path(stack_dir).resolve())


@dataclass(frozen=True)
class RunNames:
    """Names that keep one harness run apart from every other (topic, group, flow ids)."""

    workdir: Path
    topic: str
    group: str
    run_id: int


def fresh_run(report_dir: Path, kind: str, name: str) -> RunNames:
    """Empty ``report_dir``, make its outlet workdir and name a fresh topic and group."""
    if report_dir.exists():
        shutil.rmtree(report_dir)
    workdir = report_dir / "outlet"
    workdir.mkdir(parents=True)
    topic = f"{kind}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return RunNames(workdir, topic, f"outlet-{topic}", int(time.time()) % 255 + 1)


def prepare_tables(ep: Endpoints, workdir: Path, destinations: Sequence[str], topic: str,
                   database: str = "flows") -> None:
    """``outlet schema apply`` on the direct URLs, then empty the flows tables.

    The schema config is generated unmodified: overrides that break a destination (a wrong
    password) must not break the set-up.
    """
    cfg = outlet_config(ep, state_path=str(workdir / "schema-state"), http_port=0,
                        destinations=destinations, proxied=False, topic=topic,
                        database=database)
    path = workdir / ("schema.yaml" if database == "flows" else f"schema-{database}.yaml")
    apply_schema(path, write_config(path, cfg))
    for d in destinations:
        verify.reset_table(ep.clickhouse[d], database)
