"""Start and stop ``teststack.chserver`` as a subprocess (shared by the stack, tests, chaos).

Why a module: every user needs the same dance (free ports, wait for the ``READY`` line,
surface "data directory in use", SIGTERM then SIGKILL) and getting it subtly wrong makes
flaky tests.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from teststack.paths import PROJECT_ROOT

EXIT_DATA_DIR_IN_USE = 3


class ChServerStartError(RuntimeError):
    """The server did not become ready; carries its exit code and stderr."""

    def __init__(self, message: str, returncode: int | None, stderr: str) -> None:
        super().__init__(f"{message} (exit code {returncode}): {stderr.strip()[-2000:]}")
        self.returncode = returncode
        self.stderr = stderr


class DataDirInUseError(ChServerStartError):
    """Another process holds the data directory (exit code 3)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (prefer passing port 0 to the server itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class ChServerProcess:
    """A running chserver: its process, real ports and where it logs."""

    proc: subprocess.Popen[bytes]
    host: str
    http_port: int
    https_port: int
    data_dir: Path
    user: str
    password: str = field(repr=False)
    log_file: Path | None
    stderr_file: Path
    mtls_port: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def https_url(self) -> str | None:
        return f"https://{self.host}:{self.https_port}" if self.https_port else None

    @property
    def mtls_url(self) -> str | None:
        """The HTTPS port that verifies client certificates (``mtls_port`` given)."""
        return f"https://{self.host}:{self.mtls_port}" if self.mtls_port else None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code (0 on a clean stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def kill(self) -> int:
        """SIGKILL (crash simulation); returns the exit code (-9)."""
        if self.proc.poll() is None:
            self.proc.kill()
        return int(self.proc.wait())

    def stderr_text(self) -> str:
        try:
            return self.stderr_file.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ChServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_chserver(
    data_dir: str | os.PathLike[str],
    user: str,
    password: str,
    *,
    host: str = "127.0.0.1",
    http_port: int = 0,
    https_port: int | None = None,
    certfile: str | os.PathLike[str] | None = None,
    keyfile: str | os.PathLike[str] | None = None,
    mtls_port: int | None = None,
    client_ca_file: str | os.PathLike[str] | None = None,
    log_file: str | os.PathLike[str] | None = None,
    stderr_file: str | os.PathLike[str] | None = None,
    ready_timeout: float = 60.0,
    python: str = sys.executable,
    extra_args: list[str] | None = None,
    env: dict[str, str] | None = None,
    die_with_parent: bool = False,
) -> ChServerProcess:
    """Start ``python -m teststack.chserver`` and wait for its ``READY`` line.

    Ports default to 0 (the server binds a free port and reports it: no race). Pass
    ``https_port=0`` with ``certfile``/``keyfile`` to also serve HTTPS, ``mtls_port=0``
    with them and ``client_ca_file`` to also serve HTTPS that requires client certificates
    signed by that CA (verification mode strict). Raises
    ``DataDirInUseError`` if another process holds ``data_dir``, ``ChServerStartError`` on
    any other failure. The process keeps running until ``stop()``/``kill()`` (it must
    outlive ``chaos stack up``); ``die_with_parent=True`` (tests) stops it when this
    process dies, so a crashed test run leaks no server.
    """
    data = Path(data_dir).absolute()
    data.mkdir(parents=True, exist_ok=True)
    if stderr_file is None:
        fd, name = tempfile.mkstemp(prefix="chserver-", suffix=".stderr")
        os.close(fd)
        err_path = Path(name)
    else:
        err_path = Path(stderr_file)
    cmd = [
        python, "-m", "teststack.chserver",
        "--host", host,
        "--http-port", str(http_port),
        "--data-dir", str(data),
        "--user", user,
        "--password", password,
    ]  # fmt: skip
    if https_port is not None:
        if certfile is None or keyfile is None:
            raise ValueError("https_port needs certfile and keyfile")
        cmd += ["--https-port", str(https_port), "--certfile", str(certfile)]
        cmd += ["--keyfile", str(keyfile)]
    if mtls_port is not None:
        if certfile is None or keyfile is None or client_ca_file is None:
            raise ValueError("mtls_port needs certfile, keyfile and client_ca_file")
        if https_port is None:
            cmd += ["--certfile", str(certfile), "--keyfile", str(keyfile)]
        cmd += ["--mtls-port", str(mtls_port), "--client-ca-file", str(client_ca_file)]
    if log_file is not None:
        cmd += ["--log-file", str(log_file)]
    if die_with_parent:
        cmd += ["--parent-pid", str(os.getpid())]
    cmd += extra_args or []
    proc_env = dict(os.environ if env is None else env)
    # Make `-m teststack.chserver` importable wherever the caller runs from.
    root = str(PROJECT_ROOT)
    proc_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, proc_env.get("PYTHONPATH", "")) if p)
    with open(err_path, "ab") as err:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=proc_env,
            start_new_session=True,  # a Ctrl-C in the parent's terminal is ours to forward
        )
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + ready_timeout
    try:
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise ChServerStartError("chserver not ready in time", None, _read(err_path))
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
            elif proc.poll() is not None:
                break
    finally:
        proc.stdout.close()  # the server writes nothing to stdout after READY
    text = line.decode(errors="replace").strip()
    if not text.startswith("READY "):
        code = proc.wait()
        stderr = _read(err_path)
        if code == EXIT_DATA_DIR_IN_USE:
            raise DataDirInUseError(f"data directory in use: {data}", code, stderr)
        raise ChServerStartError("chserver failed to start", code, stderr)
    ports = dict(kv.split("=", 1) for kv in text.split()[1:])
    return ChServerProcess(
        proc=proc,
        host=host,
        http_port=int(ports["http"]),
        https_port=int(ports.get("https", "0")),
        data_dir=data,
        user=user,
        password=password,
        log_file=Path(log_file) if log_file is not None else None,
        stderr_file=err_path,
        mtls_port=int(ports.get("mtls", "0")),
    )


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
