"""Logging setup: human-readable by default, one JSON object per line on request."""

from __future__ import annotations

import json
import logging
import sys
import time

# Lines the HTTP transport logs for a failure that the destination reports itself, once per
# attempt with its cause (outlet/outage.py): urllib3's own connect retry and
# clickhouse-connect's notice before it raises.
TRANSPORT_DUPLICATES = (
    ("urllib3.connectionpool", "Retrying ("),
    ("clickhouse_connect.driver", "Unexpected Http Driver Exception"),
)


def drop_transport_duplicates(record: logging.LogRecord) -> bool:
    """Handler filter (records from child loggers skip their parents' filters)."""
    return not any(record.name.startswith(name) and str(record.msg).startswith(text)
                   for name, text in TRANSPORT_DUPLICATES)


# Conditions librdkafka reports at warning level while it retries them by itself (a broker
# still loading its group coordinator after a start, a coordinator moving): information
# for us, not something an operator must act on.
LIBRDKAFKA_TRANSIENT = ("Coordinator load in progress", "Coordinator not available",
                        "Not coordinator")


def _librdkafka_level(record: logging.LogRecord) -> bool:
    if record.levelno == logging.WARNING and any(
            text in record.getMessage() for text in LIBRDKAFKA_TRANSIENT):
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)
    return True


def librdkafka_logger(name: str = "librdkafka") -> logging.Logger:
    """The logger to hand to a confluent-kafka client (``logger=``): librdkafka's lines go
    through our handlers and format at their syslog level (transient retries at info)
    instead of raw ``%4|...|`` lines on stderr."""
    logger = logging.getLogger(name)
    if _librdkafka_level not in logger.filters:
        logger.addFilter(_librdkafka_level)
    return logger


class JSONFormatter(logging.Formatter):
    """Structured lines for log shippers (time, level, logger, message, exc)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(level: str = "info", fmt: str = "human") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(drop_transport_duplicates)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    """The root level (live reconfiguration changes it); chatty libraries stay at warning."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    logging.getLogger("hypercorn.error").setLevel(max(logging.WARNING, root.level))
    # Their warnings repeat each failed request (every probe of a dead destination); the
    # destination logs every failure itself, with its kind, attempt and server.
    for noisy in ("urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR, root.level))
