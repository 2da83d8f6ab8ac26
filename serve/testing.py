"""`slimbert serve` as a subprocess on a free loopback port: for tests and benchmarks.

    >>> server = ServerProcess(export_dir, "--backend", "cpu", log_dir=tmp).ready()
    >>> httpx.get(server.url + "/healthz").json()["model"]
    'slimbert'
    >>> grpc.insecure_channel(server.grpc_target)  # TF Serving's gRPC API, same model
    >>> server.stop()
    0
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class ServerError(RuntimeError):
    """The server exited or did not answer /healthz in time (the message ends with the
    tail of its log)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """`python -m pipeline.cli serve EXPORT_DIR --port P --grpc-port G ARGS`, stderr to a
    log file.

    Args:
        export_dir: Path. The export artifact to serve.
        *args: str. More `slimbert serve` arguments; without `--grpc-port`, gRPC gets
            another free port (`grpc_target`; None with `--grpc-port 0`).
        log_dir: Path. Where `serve-<port>.log` is written.
    """

    def __init__(self, export_dir: Path, *args: str, log_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if "--grpc-port" not in args:
            args = (*args, "--grpc-port", str(next(
                port for port in iter(free_port, None) if port != self.port)))
        self.grpc_port = int(args[args.index("--grpc-port") + 1])
        self.grpc_target = f"127.0.0.1:{self.grpc_port}" if self.grpc_port else None
        self.log = Path(log_dir) / f"serve-{self.port}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "serve", str(export_dir),
                 "--port", str(self.port), *args],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)

    def stderr(self) -> str:
        return self.log.read_text()

    def ready(self, timeout: float = 240) -> ServerProcess:
        """Wait until /healthz answers 200; raises `ServerError` if it exits first or
        `timeout` seconds pass."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited with {self.process.returncode} "
                                  f"(log {self.log}):\n{self.stderr()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise ServerError(f"the server did not answer in {timeout} s (log {self.log}):\n"
                          f"{self.stderr()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM (graceful shutdown); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)
