"""Local-disk writes of the spool and the ledger, and how their failures are named.

``write_all`` writes through an unbuffered file descriptor: a write that fails (ENOSPC,
EIO...) leaves nothing in a user-space buffer that a later flush would still push out, so
truncating the file back to its last good size really undoes it.

``error_class`` names a failure by its errno (``ENOSPC``, ``EIO``, ``EROFS``, ``ENOENT``,
...): what metrics and /readyz show. The message, which names the path, goes to the log
only. ``ERROR_CLASSES`` bounds the metric's label values.
"""

from __future__ import annotations

import errno
import os

ERROR_CLASSES = ("ENOSPC", "EDQUOT", "EIO", "EROFS", "ENOENT", "EACCES", "other")


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` at the descriptor's position (short writes resumed)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def error_class(exc: BaseException) -> str:
    """``ENOSPC``, ``EIO``, ... for an OSError; ``other`` for anything else."""
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    if name == "EPERM":
        name = "EACCES"
    return name if name in ERROR_CLASSES else "other"


def describe(exc: OSError, where: object) -> str:
    """The log's account of a failure: the path and the system's message."""
    path = exc.filename if exc.filename is not None else where
    return f"{path}: {exc.strerror or exc} ({error_class(exc)})"
