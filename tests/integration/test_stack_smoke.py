"""The local stack works for every client trovemeter uses: confluent-kafka, pika and Faust
(aiokafka) against the Kafka 4.x broker that `make up` runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pika
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.integration.conftest import free_port
from trovemeter.topics import topic_specs

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, partitions, 1)])[name].result(timeout=30)


def test_kafka_produce_consume(kafka_bootstrap: str, unique_name: str) -> None:
    create_topic(kafka_bootstrap, unique_name)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True, "acks": "all"})
    reports: list[object] = []
    producer.produce(unique_name, key=b"k", value=b"hello", on_delivery=lambda err, msg: reports.append(err))
    producer.flush(30)
    assert reports == [None]

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": unique_name,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([unique_name])
    deadline = time.monotonic() + 30
    message = None
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is not None and not message.error():
            break
    consumer.close()
    assert message is not None and message.value() == b"hello" and message.key() == b"k"


def test_auto_topic_creation_is_off(kafka_bootstrap: str, unique_name: str) -> None:
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "message.timeout.ms": 3000})
    errors: list[object] = []
    producer.produce(unique_name, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    producer.flush(10)
    assert errors and errors[0] is not None
    assert unique_name not in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics


def test_project_topics_exist_with_their_policies(kafka_bootstrap: str) -> None:
    from confluent_kafka.admin import ConfigResource

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    topics = admin.list_topics(timeout=10).topics
    for spec in topic_specs():
        assert spec.name in topics, f"{spec.name} missing: `trovemeter topics` creates it"
        assert len(topics[spec.name].partitions) == spec.partitions
        resource = ConfigResource("topic", spec.name)
        config = admin.describe_configs([resource])[resource].result(timeout=10)
        assert config["cleanup.policy"].value == spec.cleanup_policy


def test_rabbitmq_publish_consume(rabbit_url: str, unique_name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    channel = connection.channel()
    channel.queue_declare(unique_name, exclusive=True)
    channel.confirm_delivery()
    channel.basic_publish("", unique_name, b'{"hello": "rabbit"}',
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))
    method, properties, body = channel.basic_get(unique_name, auto_ack=False)
    assert body == b'{"hello": "rabbit"}' and properties.content_type == "application/json"
    channel.basic_ack(method.delivery_tag)
    connection.close()


def test_faust_app_consumes_writes_a_table_and_stops(kafka_bootstrap: str, unique_name: str) -> None:
    create_topic(kafka_bootstrap, unique_name)
    port = free_port()
    env = {**os.environ, "SMOKE_APP_ID": unique_name, "SMOKE_TOPIC": unique_name,
           "SMOKE_WEB_PORT": str(port), "TROVEMETER_KAFKA_BOOTSTRAP": kafka_bootstrap,
           "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [str(Path(sys.executable).with_name("faust")), "-A", "tests.integration.faust_smoke_app",
         "worker", "-l", "warn", "--web-port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for key in "aababbaaab":
            producer.produce(unique_name, key=key.encode(), value=b"1")
        producer.flush(30)

        counts: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and counts != {"a": 6, "b": 4}:
            assert worker.poll() is None, f"worker exited early:\n{worker.stdout.read() if worker.stdout else ''}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/counts/", timeout=2) as response:
                    counts = json.loads(response.read())
            except OSError:
                pass
            time.sleep(0.5)
        assert counts == {"a": 6, "b": 4}
        changelog = f"{unique_name}-counts-changelog"
        assert changelog in AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10).topics
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            output, _ = worker.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            output, _ = worker.communicate()
            pytest.fail(f"Faust worker did not stop within 60s of SIGTERM:\n{output}")
    assert worker.returncode == 0, output
