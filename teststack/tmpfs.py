"""Small tmpfs mounts for disk-fault tests: a disk that really fills up (ENOSPC).

``mounted(path, size)`` mounts a tmpfs of ``size`` bytes on ``path`` (created) and always
unmounts it on the way out (lazily if something still holds it open). Mounting needs
root (CI runs as root): ``TmpfsUnavailable`` says so otherwise, and tests skip with that
message. ``fill(path, leave)`` writes a ballast file until at most ``leave`` bytes are
free; ``release(path)`` deletes it: space returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

BALLAST = ".ballast"
_CHUNK = 64 << 10


class TmpfsUnavailable(RuntimeError):
    """A tmpfs cannot be mounted here (not root, or no mount(8))."""


def unavailable() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root): run as root to test disk faults"
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return "mount(8) and umount(8) are needed to test disk faults"
    return None


@contextlib.contextmanager
def mounted(path: Path, size: int) -> Iterator[Path]:
    """A fresh tmpfs of `size` bytes on `path` for the duration of the block."""
    why = unavailable()
    if why is not None:
        raise TmpfsUnavailable(why)
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                          str(path)], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise TmpfsUnavailable(f"mount -t tmpfs on {path} failed: {res.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int = 0) -> int:
    """Write a ballast file on `path`'s file system until at most `leave` bytes are free
    (0: until the disk is full); returns the ballast's size."""
    written = 0
    with open(path / BALLAST, "ab", buffering=0) as f:
        while (room := free_bytes(path) - leave) > 0:
            try:
                written += f.write(b"\0" * min(_CHUNK, room))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return written


def release(path: Path) -> None:
    """Delete the ballast: the space it took returns."""
    (path / BALLAST).unlink(missing_ok=True)
