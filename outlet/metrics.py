"""Every metric the outlet exports, in one place (names are part of our interface).

Each outlet instance owns a registry so that tests can run several outlets in one
process without their counters bleeding into each other.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "outlet"

INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)


class Metrics:
    """The outlet's metrics, grouped by component as in Akvorado."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        p = PREFIX
        # configuration from an orchestrator: see enable_config_refresh
        self.config_last_refresh: Gauge | None = None
        self.config_refresh_errors: Counter | None = None
        # kafka input
        self.kafka_messages = Counter(
            f"{p}_kafka_received_messages", "Kafka records received.", registry=r
        )
        self.kafka_bytes = Counter(
            f"{p}_kafka_received_bytes", "Kafka record payload bytes received.", registry=r
        )
        self.kafka_errors = Counter(
            f"{p}_kafka_errors", "Kafka consumer errors by kind.", ["error"], registry=r
        )
        self.kafka_paused = Gauge(
            f"{p}_kafka_paused",
            "1 while consumption is paused because the pipeline is full (backpressure).",
            registry=r,
        )
        self.kafka_committed_offset = Gauge(
            f"{p}_kafka_committed_offset",
            "Last offset committed to Kafka (next offset to read) per partition.",
            ["partition"],
            registry=r,
        )
        self.kafka_lag = Gauge(
            f"{p}_kafka_consumergroup_lag_messages",
            "High watermark minus committed offset per partition.",
            ["partition"],
            registry=r,
        )
        self.kafka_commits = Counter(
            f"{p}_kafka_commits", "Successful offset commits.", registry=r
        )
        # decoding
        self.flows_received = Counter(
            f"{p}_flows_received", "Flows decoded from Kafka records.", registry=r
        )
        self.decode_errors = Counter(
            f"{p}_decode_errors",
            "Kafka records skipped because they could not be decoded.",
            ["reason"],
            registry=r,
        )
        # batching
        self.batch_size = Histogram(
            f"{p}_batch_size_flows", "Flows per sealed batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batches_sealed = Counter(
            f"{p}_batches_sealed", "Sealed batches by trigger.", ["reason"], registry=r
        )
        self.encode_seconds = Histogram(
            f"{p}_encode_seconds",
            "Time to decode, enrich and encode one batch.",
            buckets=INSERT_BUCKETS,
            registry=r,
        )
        # destinations
        d = ["destination"]
        self.dest_flows = Counter(
            f"{p}_destination_flows_written", "Flows stored per destination.", d, registry=r
        )
        self.dest_batches = Counter(
            f"{p}_destination_batches_written", "Batches stored per destination.", d, registry=r
        )
        self.dest_insert_seconds = Histogram(
            f"{p}_destination_insert_duration_seconds",
            "Duration of successful inserts per destination.",
            d,
            buckets=INSERT_BUCKETS,
            registry=r,
        )
        self.dest_errors = Counter(
            f"{p}_destination_insert_errors",
            "Failed insert attempts per destination and kind.",
            ["destination", "error"],
            registry=r,
        )
        self.dest_retries = Counter(
            f"{p}_destination_retries", "Insert attempts that were retries.", d, registry=r
        )
        self.dest_retries_exceeded_batches = Counter(
            f"{p}_destination_retries_exceeded_batches",
            "Batches an additional destination gave up on (not stored there).",
            ["destination", "reason"],
            registry=r,
        )
        self.dest_retries_exceeded_flows = Counter(
            f"{p}_destination_retries_exceeded_flows",
            "Flows in batches an additional destination gave up on (not stored there).",
            ["destination", "reason"],
            registry=r,
        )
        self.dest_queued = Gauge(
            f"{p}_destination_queued_batches",
            "Encoded batches waiting for this destination.",
            d,
            registry=r,
        )
        self.dest_last_success = Gauge(
            f"{p}_destination_last_success_timestamp_seconds",
            "Unix time of the last successful insert.",
            d,
            registry=r,
        )
        self.dest_up = Gauge(
            f"{p}_destination_up",
            "1 when the last insert attempt succeeded, 0 when it failed.",
            d,
            registry=r,
        )
        # spool and circuit breaker (additional destinations)
        self.spool_bytes = Gauge(
            f"{p}_spool_bytes", "Bytes of batches waiting in the on-disk spool.", d, registry=r
        )
        self.spool_batches = Gauge(
            f"{p}_spool_batches", "Batches waiting in the on-disk spool.", d, registry=r
        )
        self.spool_oldest_age = Gauge(
            f"{p}_spool_oldest_age_seconds",
            "Age of the oldest spooled batch (0 when the spool is empty).",
            d,
            registry=r,
        )
        self.spool_appended_flows = Counter(
            f"{p}_spool_appended_flows",
            "Flows written to the spool, by why they could not be inserted live.",
            ["destination", "reason"],
            registry=r,
        )
        self.spool_appended_batches = Counter(
            f"{p}_spool_appended_batches",
            "Batches written to the spool, by why they could not be inserted live.",
            ["destination", "reason"],
            registry=r,
        )
        self.spool_replayed_flows = Counter(
            f"{p}_spool_replayed_flows", "Spooled flows replayed and stored.", d, registry=r
        )
        self.spool_replayed_batches = Counter(
            f"{p}_spool_replayed_batches", "Spooled batches replayed and stored.", d, registry=r
        )
        self.spool_dropped_flows = Counter(
            f"{p}_spool_dropped_flows",
            "Flows dropped from a full spool (drop-oldest): lost for this destination.",
            d,
            registry=r,
        )
        self.spool_dropped_batches = Counter(
            f"{p}_spool_dropped_batches",
            "Batches dropped from a full spool (drop-oldest): lost for this destination.",
            d,
            registry=r,
        )
        self.spool_corrupt_records = Counter(
            f"{p}_spool_corrupt_records",
            "Spool records that failed their checksum and were skipped (never sent).",
            d,
            registry=r,
        )
        self.circuit_state = Gauge(
            f"{p}_destination_circuit_state",
            "Circuit breaker state: 0 closed, 1 open (no attempts), 2 half-open (probing).",
            d,
            registry=r,
        )
        # commit
        self.commit_pending_batches = Gauge(
            f"{p}_commit_pending_batches",
            "Sealed batches not yet committed to Kafka (commit lag, in batches).",
            registry=r,
        )
        self.commit_pending_flows = Gauge(
            f"{p}_commit_pending_flows",
            "Flows in sealed batches not yet committed to Kafka.",
            registry=r,
        )

    def enable_config_refresh(self) -> None:
        """The metrics of a configuration fetched from an orchestrator; a local file has
        none (an alert on them must not fire for outlets that use no orchestrator)."""
        self.config_last_refresh = Gauge(
            f"{PREFIX}_config_last_refresh_timestamp_seconds",
            "Unix time of the last successful configuration fetch from the orchestrator"
            " (when started from the cache: the time that cached configuration was fetched).",
            registry=self.registry,
        )
        self.config_refresh_errors = Counter(
            f"{PREFIX}_config_refresh_errors",
            "Failed configuration fetches from the orchestrator.",
            registry=self.registry,
        )
