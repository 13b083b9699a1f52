"""Every metric the outlet exports, in one place (names are part of our interface).

Each outlet instance owns a registry so that tests can run several outlets in one
process without their counters bleeding into each other. The registry also carries the
standard ``process_*`` metrics (CPU, memory): CPU per flow is the outlet's capacity signal
(docs/operations.md).
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

PREFIX = "outlet"
RELOAD_OUTCOMES = ("applied", "refused", "invalid")

INSERT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (10, 100, 1_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000)

# Every exported name, as a constant (dashboards, alert rules and the harnesses use them:
# never rename). Counters are named with their `_total` sample (prometheus_client strips
# it from the family name); a histogram name is the base of its `_bucket`, `_sum`,
# `_count` samples.

# kafka input
KAFKA_RECEIVED_MESSAGES_TOTAL = "outlet_kafka_received_messages_total"
KAFKA_RECEIVED_BYTES_TOTAL = "outlet_kafka_received_bytes_total"
KAFKA_ERRORS_TOTAL = "outlet_kafka_errors_total"
KAFKA_PAUSED = "outlet_kafka_paused"
KAFKA_COMMITTED_OFFSET = "outlet_kafka_committed_offset"
KAFKA_CONSUMERGROUP_LAG_MESSAGES = "outlet_kafka_consumergroup_lag_messages"
KAFKA_COMMITS_TOTAL = "outlet_kafka_commits_total"
KAFKA_CONNECTION_ERRORS_TOTAL = "outlet_kafka_connection_errors_total"
KAFKA_CONSUMER_RESTARTS_TOTAL = "outlet_kafka_consumer_restarts_total"
# decoding
FLOWS_RECEIVED_TOTAL = "outlet_flows_received_total"
DECODE_ERRORS_TOTAL = "outlet_decode_errors_total"
# batching
BATCH_SIZE_FLOWS = "outlet_batch_size_flows"
BATCHES_SEALED_TOTAL = "outlet_batches_sealed_total"
BATCHES_ABORTED_TOTAL = "outlet_batches_aborted_total"
BATCHES_HANDED_OVER_TOTAL = "outlet_batches_handed_over_total"
ENCODE_SECONDS = "outlet_encode_seconds"
CODEC_ERRORS_TOTAL = "outlet_codec_errors_total"
# destinations
DESTINATION_FLOWS_WRITTEN_TOTAL = "outlet_destination_flows_written_total"
DESTINATION_BATCHES_WRITTEN_TOTAL = "outlet_destination_batches_written_total"
DESTINATION_INSERT_DURATION_SECONDS = "outlet_destination_insert_duration_seconds"
DESTINATION_INSERT_ERRORS_TOTAL = "outlet_destination_insert_errors_total"
DESTINATION_RETRIES_TOTAL = "outlet_destination_retries_total"
DESTINATION_RETRIES_EXCEEDED_BATCHES_TOTAL = "outlet_destination_retries_exceeded_batches_total"
DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL = "outlet_destination_retries_exceeded_flows_total"
DESTINATION_QUEUED_BATCHES = "outlet_destination_queued_batches"
DESTINATION_LAST_SUCCESS_TIMESTAMP_SECONDS = "outlet_destination_last_success_timestamp_seconds"
DESTINATION_UP = "outlet_destination_up"
DESTINATION_TLS_RELOADS_TOTAL = "outlet_destination_tls_reloads_total"
# TLS files (every link)
TLS_CLIENT_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS = (
    "outlet_tls_client_certificate_expiry_timestamp_seconds"
)
# deduplication the servers did (outlet/dedup_audit.py), label attempt: first | repeat
DESTINATION_DEDUPLICATED_BATCHES_TOTAL = "outlet_destination_deduplicated_batches_total"
DESTINATION_DEDUPLICATED_FLOWS_TOTAL = "outlet_destination_deduplicated_flows_total"
DESTINATION_DEDUPLICATION_PENDING_BATCHES = "outlet_destination_deduplication_pending_batches"
DESTINATION_DEDUPLICATION_UNVERIFIED_BATCHES_TOTAL = (
    "outlet_destination_deduplication_unverified_batches_total"
)
# lookups before a late resend (outlet/dedup_check.py), label outcome: stored | absent |
# unknown_replayed | unknown_skipped
DESTINATION_DEDUP_CHECKS_TOTAL = "outlet_destination_dedup_checks_total"
# spool and circuit breaker (additional destinations)
SPOOL_BYTES = "outlet_spool_bytes"
SPOOL_BATCHES = "outlet_spool_batches"
SPOOL_MAX_BYTES = "outlet_spool_max_bytes"
SPOOL_OLDEST_AGE_SECONDS = "outlet_spool_oldest_age_seconds"
SPOOL_APPENDED_FLOWS_TOTAL = "outlet_spool_appended_flows_total"
SPOOL_APPENDED_BATCHES_TOTAL = "outlet_spool_appended_batches_total"
SPOOL_REPLAYED_FLOWS_TOTAL = "outlet_spool_replayed_flows_total"
SPOOL_REPLAYED_BATCHES_TOTAL = "outlet_spool_replayed_batches_total"
SPOOL_DROPPED_FLOWS_TOTAL = "outlet_spool_dropped_flows_total"
SPOOL_DROPPED_BATCHES_TOTAL = "outlet_spool_dropped_batches_total"
SPOOL_CORRUPT_RECORDS_TOTAL = "outlet_spool_corrupt_records_total"
SPOOL_WRITE_ERRORS_TOTAL = "outlet_spool_write_errors_total"
SPOOL_WRITE_FAILING = "outlet_spool_write_failing"
DESTINATION_CIRCUIT_STATE = "outlet_destination_circuit_state"
# configuration from an orchestrator (only after Metrics.enable_config_refresh)
CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS = "outlet_config_last_refresh_timestamp_seconds"
CONFIG_REFRESH_ERRORS_TOTAL = "outlet_config_refresh_errors_total"
CONFIG_REFRESH_INTERVAL_SECONDS = "outlet_config_refresh_interval_seconds"
# live reconfiguration (orchestrator polls, SIGHUP): outlet/reconfig.py
CONFIG_RELOADS_TOTAL = "outlet_config_reloads_total"
CONFIG_OUTDATED = "outlet_config_outdated"
# the state directory: an older outlet's ledger file (outlet/statedisk.py)
STATE_DISK_ERRORS_TOTAL = "outlet_state_disk_errors_total"
# commit and the batch ledger (offset-commit metadata)
COMMIT_PENDING_BATCHES = "outlet_commit_pending_batches"
COMMIT_PENDING_FLOWS = "outlet_commit_pending_flows"
LEDGER_FOREIGN_BATCHES_TOTAL = "outlet_ledger_foreign_batches_total"
LEDGER_FULL_WAITS_TOTAL = "outlet_ledger_full_waits_total"


class Metrics:
    """The outlet's metrics, grouped by component as in Akvorado."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        # configuration from an orchestrator: see enable_config_refresh
        self.config_last_refresh: Gauge | None = None
        self.config_refresh_errors: Counter | None = None
        self.config_refresh_interval: Gauge | None = None
        # live reconfiguration
        self.config_reloads = Counter(
            CONFIG_RELOADS_TOTAL,
            "New configurations received while running (a changed orchestrator answer, a"
            " SIGHUP), by outcome: applied live, refused (a change that needs a restart;"
            " the running configuration is kept) or invalid (kept too).",
            ["outcome"],
            registry=r,
        )
        for outcome in RELOAD_OUTCOMES:
            self.config_reloads.labels(outcome)
        self.config_outdated = Gauge(
            CONFIG_OUTDATED,
            "1 while the last configuration received was refused or invalid: the outlet runs"
            " an older one (a restart applies a refused one).",
            registry=r,
        )
        # kafka input
        self.kafka_messages = Counter(
            KAFKA_RECEIVED_MESSAGES_TOTAL, "Kafka records received.", registry=r
        )
        self.kafka_bytes = Counter(
            KAFKA_RECEIVED_BYTES_TOTAL, "Kafka record payload bytes received.", registry=r
        )
        self.kafka_errors = Counter(
            KAFKA_ERRORS_TOTAL, "Kafka consumer errors by kind.", ["error"], registry=r
        )
        self.kafka_paused = Gauge(
            KAFKA_PAUSED,
            "1 while consumption is paused because the pipeline is full (backpressure).",
            registry=r,
        )
        self.kafka_committed_offset = Gauge(
            KAFKA_COMMITTED_OFFSET,
            "Last offset committed to Kafka (next offset to read) per partition.",
            ["partition"],
            registry=r,
        )
        self.kafka_lag = Gauge(
            KAFKA_CONSUMERGROUP_LAG_MESSAGES,
            "High watermark minus committed offset per partition.",
            ["partition"],
            registry=r,
        )
        self.kafka_commits = Counter(
            KAFKA_COMMITS_TOTAL, "Successful offset commits.", registry=r
        )
        self.kafka_connection_errors = Counter(
            KAFKA_CONNECTION_ERRORS_TOTAL,
            "Failed connection attempts to brokers, by reason (auth, sasl-mechanism, "
            "certificate-*, hostname-mismatch, tls-handshake, transport, other).",
            ["reason"],
            registry=r,
        )
        self.kafka_consumer_restarts = Counter(
            KAFKA_CONSUMER_RESTARTS_TOTAL,
            "Consumers recreated: tls-files-changed (rotation), backoff (after a failure "
            "that needs action).",
            ["reason"],
            registry=r,
        )
        # TLS files
        self.tls_client_cert_expiry = Gauge(
            TLS_CLIENT_CERTIFICATE_EXPIRY_TIMESTAMP_SECONDS,
            "notAfter of the client certificate in use (unix time), per cert-file.",
            ["file"],
            registry=r,
        )
        # decoding
        self.flows_received = Counter(
            FLOWS_RECEIVED_TOTAL, "Flows decoded from Kafka records.", registry=r
        )
        self.decode_errors = Counter(
            DECODE_ERRORS_TOTAL,
            "Kafka records skipped because they could not be decoded.",
            ["reason"],
            registry=r,
        )
        # batching
        self.batch_size = Histogram(
            BATCH_SIZE_FLOWS, "Flows per sealed batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.batches_sealed = Counter(
            BATCHES_SEALED_TOTAL, "Sealed batches by trigger.", ["reason"], registry=r
        )
        self.batches_aborted = Counter(
            BATCHES_ABORTED_TOTAL,
            "Cut batches never inserted: their partition was revoked or lost before Kafka "
            "acknowledged their seal (the next owner reads the records again).",
            registry=r,
        )
        self.batches_handed_over = Counter(
            BATCHES_HANDED_OVER_TOTAL,
            "Sealed batches still unsettled when their partition was revoked or lost: left "
            "to the partition's next owner, which rebuilds them under the same tokens.",
            registry=r,
        )
        self.codec_errors = Counter(
            CODEC_ERRORS_TOTAL,
            "Codec (engine) failures on a batch, by outcome: retried, or quarantined "
            "(the batch's records skipped, counted in decode_errors{reason=quarantined}).",
            ["outcome"],
            registry=r,
        )
        self.encode_seconds = Histogram(
            ENCODE_SECONDS,
            "Time to decode, enrich and encode one batch.",
            buckets=INSERT_BUCKETS,
            registry=r,
        )
        # destinations
        d = ["destination"]
        self.dest_flows = Counter(
            DESTINATION_FLOWS_WRITTEN_TOTAL, "Flows stored per destination.", d, registry=r
        )
        self.dest_batches = Counter(
            DESTINATION_BATCHES_WRITTEN_TOTAL, "Batches stored per destination.", d, registry=r
        )
        self.dest_insert_seconds = Histogram(
            DESTINATION_INSERT_DURATION_SECONDS,
            "Duration of successful inserts per destination.",
            d,
            buckets=INSERT_BUCKETS,
            registry=r,
        )
        self.dest_errors = Counter(
            DESTINATION_INSERT_ERRORS_TOTAL,
            "Failed insert attempts per destination and kind.",
            ["destination", "error"],
            registry=r,
        )
        self.dest_retries = Counter(
            DESTINATION_RETRIES_TOTAL, "Insert attempts that were retries.", d, registry=r
        )
        self.dest_retries_exceeded_batches = Counter(
            DESTINATION_RETRIES_EXCEEDED_BATCHES_TOTAL,
            "Batches an additional destination gave up on (not stored there).",
            ["destination", "reason"],
            registry=r,
        )
        self.dest_retries_exceeded_flows = Counter(
            DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL,
            "Flows in batches an additional destination gave up on (not stored there).",
            ["destination", "reason"],
            registry=r,
        )
        # deduplication seen by the server (outlet/dedup_audit.py); attempt: first | repeat
        self.dest_dedup_batches = Counter(
            DESTINATION_DEDUPLICATED_BATCHES_TOTAL,
            "Inserts the server deduplicated (first: a collision or foreign writer; "
            "repeat: a retry, rebuild or replay, as intended).",
            ["destination", "attempt"],
            registry=r,
        )
        self.dest_dedup_flows = Counter(
            DESTINATION_DEDUPLICATED_FLOWS_TOTAL,
            "Flows the server dropped as duplicates, by attempt (first | repeat).",
            ["destination", "attempt"],
            registry=r,
        )
        self.dest_dedup_unverified = Counter(
            DESTINATION_DEDUPLICATION_UNVERIFIED_BATCHES_TOTAL,
            "Inserts whose outcome the server's part/query logs never showed (logs off or "
            "not readable): deduplication on them is not counted.",
            d,
            registry=r,
        )
        self.dest_dedup_checks = Counter(
            DESTINATION_DEDUP_CHECKS_TOTAL,
            "Batches that may be stored already, looked up in system.query_log before a "
            "late resend (past the table's deduplication window), by outcome.",
            ["destination", "outcome"],
            registry=r,
        )
        self.dest_dedup_pending = Gauge(
            DESTINATION_DEDUPLICATION_PENDING_BATCHES,
            "Inserts whose outcome the deduplication audit has not read back yet.",
            d,
            registry=r,
        )
        self.dest_queued = Gauge(
            DESTINATION_QUEUED_BATCHES,
            "Encoded batches waiting for this destination.",
            d,
            registry=r,
        )
        self.dest_last_success = Gauge(
            DESTINATION_LAST_SUCCESS_TIMESTAMP_SECONDS,
            "Unix time of the last successful insert.",
            d,
            registry=r,
        )
        self.dest_up = Gauge(
            DESTINATION_UP,
            "1 when the last insert attempt succeeded, 0 when it failed.",
            d,
            registry=r,
        )
        self.dest_tls_reloads = Counter(
            DESTINATION_TLS_RELOADS_TOTAL,
            "TLS files changed on disk and taken into use (new connections use them).",
            d,
            registry=r,
        )
        # spool and circuit breaker (additional destinations)
        self.spool_bytes = Gauge(
            SPOOL_BYTES, "Bytes of batches waiting in the on-disk spool.", d, registry=r
        )
        self.spool_max_bytes = Gauge(
            SPOOL_MAX_BYTES, "Configured spool capacity (spool.max-bytes).", d, registry=r
        )
        self.spool_batches = Gauge(
            SPOOL_BATCHES, "Batches waiting in the on-disk spool.", d, registry=r
        )
        self.spool_oldest_age = Gauge(
            SPOOL_OLDEST_AGE_SECONDS,
            "Age of the oldest spooled batch (0 when the spool is empty).",
            d,
            registry=r,
        )
        self.spool_appended_flows = Counter(
            SPOOL_APPENDED_FLOWS_TOTAL,
            "Flows written to the spool, by why they could not be inserted live.",
            ["destination", "reason"],
            registry=r,
        )
        self.spool_appended_batches = Counter(
            SPOOL_APPENDED_BATCHES_TOTAL,
            "Batches written to the spool, by why they could not be inserted live.",
            ["destination", "reason"],
            registry=r,
        )
        self.spool_replayed_flows = Counter(
            SPOOL_REPLAYED_FLOWS_TOTAL, "Spooled flows replayed and stored.", d, registry=r
        )
        self.spool_replayed_batches = Counter(
            SPOOL_REPLAYED_BATCHES_TOTAL, "Spooled batches replayed and stored.", d, registry=r
        )
        self.spool_dropped_flows = Counter(
            SPOOL_DROPPED_FLOWS_TOTAL,
            "Flows dropped from a full spool (drop-oldest): lost for this destination.",
            d,
            registry=r,
        )
        self.spool_dropped_batches = Counter(
            SPOOL_DROPPED_BATCHES_TOTAL,
            "Batches dropped from a full spool (drop-oldest): lost for this destination.",
            d,
            registry=r,
        )
        self.spool_corrupt_records = Counter(
            SPOOL_CORRUPT_RECORDS_TOTAL,
            "Spool records that failed their checksum and were skipped (never sent).",
            d,
            registry=r,
        )
        self.spool_write_errors = Counter(
            SPOOL_WRITE_ERRORS_TOTAL,
            "Failed spool writes (append, fsync, cursor) by error class (ENOSPC, EIO, EROFS, "
            "ENOENT, ...).",
            ["destination", "error"],
            registry=r,
        )
        self.spool_write_failing = Gauge(
            SPOOL_WRITE_FAILING,
            "1 while the spool cannot write (its batches are dropped or held, by when-full).",
            d,
            registry=r,
        )
        self.circuit_state = Gauge(
            DESTINATION_CIRCUIT_STATE,
            "Circuit breaker state: 0 closed, 1 open (no attempts), 2 half-open (probing).",
            d,
            registry=r,
        )
        # the state directory
        self.state_disk_errors = Counter(
            STATE_DISK_ERRORS_TOTAL,
            "Failed writes to the state directory by operation (compact: an older outlet's "
            "ledger file) and error class.",
            ["operation", "error"],
            registry=r,
        )
        # commit
        self.commit_pending_batches = Gauge(
            COMMIT_PENDING_BATCHES,
            "Sealed batches not yet committed to Kafka (commit lag, in batches).",
            registry=r,
        )
        self.commit_pending_flows = Gauge(
            COMMIT_PENDING_FLOWS,
            "Flows in sealed batches not yet committed to Kafka.",
            registry=r,
        )
        self.ledger_foreign_batches = Counter(
            LEDGER_FOREIGN_BATCHES_TOTAL,
            "Sealed batches found in commit metadata that name another Kafka cluster "
            "(migrated or restored offsets): not rebuilt.",
            registry=r,
        )
        self.ledger_full_waits = Counter(
            LEDGER_FULL_WAITS_TOTAL,
            "Times sealing waited because a partition's pending batches filled its commit "
            "metadata (kafka.offset-metadata-max-bytes).",
            registry=r,
        )

    def forget_destination(self, name: str) -> None:
        """A destination removed from the configuration: its gauges go (they would show a
        stale state forever); its counters stay (totals over the outlet's life)."""
        for gauge in (
            self.dest_queued, self.dest_last_success, self.dest_up, self.circuit_state,
            self.spool_bytes, self.spool_max_bytes, self.spool_batches, self.spool_oldest_age,
            self.dest_dedup_pending, self.spool_write_failing,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

    def enable_config_refresh(self) -> None:
        """The metrics of a configuration fetched from an orchestrator; a local file has
        none (an alert on them must not fire for outlets that use no orchestrator).
        Idempotent."""
        if self.config_last_refresh is not None:
            return
        self.config_last_refresh = Gauge(
            CONFIG_LAST_REFRESH_TIMESTAMP_SECONDS,
            "Unix time of the last answer of the orchestrator (a configuration, or 304 to a"
            " poll; when started from the cache: the time that cached configuration was"
            " fetched).",
            registry=self.registry,
        )
        self.config_refresh_errors = Counter(
            CONFIG_REFRESH_ERRORS_TOTAL,
            "Failed configuration fetches from the orchestrator.",
            registry=self.registry,
        )
        self.config_refresh_interval = Gauge(
            CONFIG_REFRESH_INTERVAL_SECONDS,
            "How often the running outlet polls the orchestrator (--config-refresh-interval;"
            " 0: only on SIGHUP): how old the last refresh may normally be.",
            registry=self.registry,
        )
