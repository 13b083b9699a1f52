"""The Locust-free half of the load generator: settings, pacing, the shared flow source and
the run summary. ``loadtest/locustfile.py`` wires them into a Locust User and LoadTestShape.

Everything here is safe to import without gevent (tests and ``loadtest.run`` import it).
All users of one Locust process run in one OS thread (gevent), so the shared objects need
no locks: they are only touched between gevent switch points.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowgen.generator import FlowGenerator, GeneratorConfig, Totals
from flowgen.producer import ProduceStats
from flowgen.producer import encode_chunk_for as encode_chunk_for  # re-exported for Locust
from loadtest.profile import DEFAULT_FLOWS_PER_USER, DEFAULT_MAX_USERS, Profile, load_profile

ENV_PREFIX = "LOADTEST_"


@dataclass(frozen=True)
class LoadSettings:
    """What one Locust process produces, from ``LOADTEST_*`` environment variables.

    ``time_scale`` multiplies the replay's duration (2 = twice as long), ``rate_scale`` every
    rate, as ``--time-scale`` / ``--rate-scale`` of ``loadtest run``."""

    bootstrap: str
    topic: str = "flows"
    profile: str = "steady"
    time_scale: float = 1.0
    rate_scale: float = 1.0
    run_id: int = 1
    seed: int = 1
    batch: int = 1000  # flows per produced batch (one Locust request event)
    flows_per_user: float = DEFAULT_FLOWS_PER_USER
    max_users: int = DEFAULT_MAX_USERS
    summary: str = ""  # path of the JSON summary written at test stop ("" = none)
    producer_config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LoadSettings:
        env = os.environ if env is None else env

        def get(name: str, default: str = "") -> str:
            return env.get(ENV_PREFIX + name, default)

        bootstrap = get("BOOTSTRAP")
        if not bootstrap:
            raise ValueError(f"{ENV_PREFIX}BOOTSTRAP is required (host:port of Kafka)")
        return cls(
            bootstrap=bootstrap, topic=get("TOPIC", "flows"), profile=get("PROFILE", "steady"),
            time_scale=float(get("TIME_SCALE", "1")), rate_scale=float(get("RATE_SCALE", "1")),
            run_id=int(get("RUN_ID", "1")), seed=int(get("SEED", "1")),
            batch=int(get("BATCH", "1000")),
            flows_per_user=float(get("FLOWS_PER_USER", str(DEFAULT_FLOWS_PER_USER))),
            max_users=int(get("MAX_USERS", str(DEFAULT_MAX_USERS))),
            summary=get("SUMMARY"),
            producer_config=json.loads(get("PRODUCER_CONFIG", "{}")),
        )

    def to_env(self) -> dict[str, str]:
        return {
            ENV_PREFIX + "BOOTSTRAP": self.bootstrap, ENV_PREFIX + "TOPIC": self.topic,
            ENV_PREFIX + "PROFILE": self.profile, ENV_PREFIX + "TIME_SCALE": repr(self.time_scale),
            ENV_PREFIX + "RATE_SCALE": repr(self.rate_scale),
            ENV_PREFIX + "RUN_ID": str(self.run_id), ENV_PREFIX + "SEED": str(self.seed),
            ENV_PREFIX + "BATCH": str(self.batch),
            ENV_PREFIX + "FLOWS_PER_USER": repr(self.flows_per_user),
            ENV_PREFIX + "MAX_USERS": str(self.max_users), ENV_PREFIX + "SUMMARY": self.summary,
            ENV_PREFIX + "PRODUCER_CONFIG": json.dumps(self.producer_config),
        }

    def load_profile(self) -> Profile:
        return load_profile(self.profile).scaled(self.time_scale, self.rate_scale)


class Pacer:
    """A token bucket whose fill rate follows the profile continuously (wall-clock run time
    since :meth:`start`). Shared by every user of the process. Tokens never accumulate
    beyond ``max_burst_s`` seconds of the current rate, so a stalled producer does not
    burst to catch up (the offered rate is then below the profile: the report shows it)."""

    def __init__(self, profile: Profile, *, max_burst_s: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = profile
        self.max_burst_s = max_burst_s
        self.clock = clock
        self.t0: float | None = None
        self._last = 0.0
        self._tokens = 0.0
        self.target = 0.0  # last rate the shape announced (reporting only)

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self._last = self.clock()

    def run_time(self) -> float:
        return 0.0 if self.t0 is None else self.clock() - self.t0

    def rate_now(self) -> float:
        return self.profile.rate_at_wall(self.run_time())

    def take(self, want: int) -> int:
        """``want`` when that many flows may be produced now (whole batches), else 0."""
        self.start()
        now = self.clock()
        rate = self.profile.rate_at_wall(now - (now if self.t0 is None else self.t0))
        self._tokens += rate * (now - self._last)
        self._last = now
        cap = max(rate * self.max_burst_s, float(want))
        self._tokens = min(self._tokens, cap)
        if self._tokens < want:
            return 0
        self._tokens -= want
        return want

    def wait_hint(self, want: int) -> float:
        """Seconds until ``want`` more tokens (bounded to [1 ms, 50 ms])."""
        rate = self.rate_now()
        if rate <= 0:
            return 0.05
        missing = max(0.0, want - self._tokens)
        return min(0.05, max(0.001, missing / rate))


class FlowSource:
    """One unique-id FlowGenerator shared by every user: flow numbers never overlap across
    users. Records taken but not produced (a user stopped mid-batch) go back to ``pending``
    and are produced first by the next batch or by the final drain, so that the generator's
    totals equal what was enqueued."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        self.gen = FlowGenerator(cfg)
        self._it = self.gen.records(1 << 32)
        self.pending: deque[bytes] = deque()

    def take(self, n: int) -> list[bytes]:
        out: list[bytes] = []
        while self.pending and len(out) < n:
            out.append(self.pending.popleft())
        for _ in range(n - len(out)):
            out.append(next(self._it))
        return out

    def give_back(self, records: list[bytes]) -> None:
        self.pending.extendleft(reversed(records))

    def totals(self) -> Totals:
        """Totals of the records handed out (``pending`` ones included: drain them first)."""
        return self.gen.totals()


@dataclass
class DeliveryStats(ProduceStats):
    """What the Locust users enqueued, and what librdkafka says it delivered."""

    enqueued: int = 0
    batches: int = 0


@dataclass
class RunSummary:
    """Written as JSON by the locustfile at test stop; read by ``loadtest.run``."""

    profile: str
    run_id: int
    topic: str
    flows: int
    records: int
    bytes_sum: int
    packets_sum: int
    enqueued: int
    delivered: int
    failed: int
    undelivered: int  # still queued in librdkafka after the final flush
    pending: int  # taken from the generator, never enqueued (must be 0)
    batches: int
    started_at: float
    ended_at: float
    timeline: list[list[float]]  # [run time s, target flows/s, users]
    errors: list[str]

    def write(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, p)

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        return cls(**json.loads(Path(path).read_text()))

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.undelivered == 0 and self.pending == 0
