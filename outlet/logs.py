"""Logging setup: human-readable by default, one JSON object per line on request."""

from __future__ import annotations

import json
import logging
import sys
import time


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
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("hypercorn.error").setLevel(max(logging.WARNING, root.level))
    # Their warnings repeat each failed request (every probe of a dead destination); the
    # destination logs every failure itself, with its kind, attempt and server.
    for noisy in ("urllib3", "clickhouse_connect"):
        logging.getLogger(noisy).setLevel(max(logging.ERROR, root.level))
