"""Integration tests run against the real Kafka and RabbitMQ that `make up` starts.

An unreachable broker is a failure, never a skip: these tests exist to prove the real thing.
"""

from __future__ import annotations

import socket
import uuid

import pytest

from trovemeter.settings import CommonSettings


def _reachable(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def settings() -> CommonSettings:
    return CommonSettings()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: CommonSettings) -> str:
    bootstrap = settings.kafka_bootstrap.split(",")[0]
    if not _reachable(bootstrap):
        pytest.fail(f"Kafka is not reachable at {bootstrap}: run `make up` (log: .stack/kafka/logs)")
    return settings.kafka_bootstrap


@pytest.fixture(scope="session")
def rabbit_url(settings: CommonSettings) -> str:
    import pika

    url = settings.rabbit_url.get_secret_value()
    params = pika.URLParameters(url)
    if not _reachable(f"{params.host}:{params.port}"):
        pytest.fail(f"RabbitMQ is not reachable at {settings.rabbit_url_masked}: run `make up`")
    return url


@pytest.fixture
def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
