"""Confluent wire format (magic byte 0 + 4-byte schema id + Avro body) through confluent-kafka's
Schema Registry serializers, for deployments that run a Schema Registry
(``TROVEMETER_SCHEMA_REGISTRY_URL``). The only module of the core that imports a Kafka client,
and only when a ``ConfluentCodec`` is built.

Subjects follow confluent-kafka's default TopicNameStrategy (``<topic>-value``): every
trovemeter topic carries one record type. The records' conversion is the one in ``codec``.
"""

from __future__ import annotations

import json
from typing import Any

from trovemeter.codec import Codec, CodecError, RecordSerde, RegisteredSchema, default_codec

CONFLUENT_MAGIC = 0


class ConfluentCodec(RecordSerde):
    """Encodes and decodes registered records in the Confluent wire format."""

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        codec: Codec | None = None,
        serializer_conf: dict[str, Any] | None = None,
    ) -> None:
        """``url`` of the Schema Registry (``mock://...`` gives confluent-kafka's in-memory
        mock), or a ready ``client``. ``serializer_conf`` goes to every ``AvroSerializer``."""
        from confluent_kafka.schema_registry import SchemaRegistryClient

        if client is None:
            if not url:
                raise ValueError("ConfluentCodec needs a Schema Registry url or client")
            client = SchemaRegistryClient.new_client({"url": url})
        self.client = client
        self.codec = codec or default_codec()
        self._serializer_conf = serializer_conf
        self._serializers: dict[type, Any] = {}
        self._deserializers: dict[type, Any] = {}
        self._entry_by_schema_id: dict[int, RegisteredSchema] = {}

    def encode(self, record: Any, topic: str | None = None) -> bytes:
        if topic is None:
            raise ValueError("the Confluent wire format needs the topic (it names the subject)")
        from confluent_kafka.serialization import MessageField, SerializationContext

        entry = self.codec.entry_for(record)
        serializer = self._serializers.get(entry.model) or self._serializer(entry)
        return serializer(record, SerializationContext(topic, MessageField.VALUE))

    def decode(self, data: bytes, topic: str | None = None) -> Any:
        """The record in ``data``; its model is the one registered under the writer schema's
        name, read with that model's schema (so older writer versions resolve)."""
        from confluent_kafka.serialization import MessageField, SerializationContext

        if len(data) < 5 or data[0] != CONFLUENT_MAGIC:
            raise CodecError("not the Confluent wire format (no magic byte 0)")
        entry = self._entry_for_schema_id(int.from_bytes(data[1:5], "big"))
        deserializer = self._deserializers.get(entry.model) or self._deserializer(entry)
        return deserializer(data, SerializationContext(topic or "", MessageField.VALUE))

    def headers_for(self, record: Any) -> list[tuple[str, bytes]]:
        return self.codec.headers_for(record)

    def fields_encoder(self, model: type) -> None:
        return None  # AvroSerializer takes the record

    def _serializer(self, entry: RegisteredSchema) -> Any:
        from confluent_kafka.schema_registry.avro import AvroSerializer

        serializer = AvroSerializer(self.client, json.dumps(entry.schema),
                                    lambda record, _ctx: entry.to_avro(record),
                                    conf=self._serializer_conf)
        self._serializers[entry.model] = serializer
        return serializer

    def _deserializer(self, entry: RegisteredSchema) -> Any:
        from confluent_kafka.schema_registry.avro import AvroDeserializer

        deserializer = AvroDeserializer(self.client, json.dumps(entry.schema),
                                        lambda datum, _ctx: entry.from_avro(datum))
        self._deserializers[entry.model] = deserializer
        return deserializer

    def _entry_for_schema_id(self, schema_id: int) -> RegisteredSchema:
        entry = self._entry_by_schema_id.get(schema_id)
        if entry is None:
            writer = json.loads(self.client.get_schema(schema_id).schema_str)
            name = writer["name"] if "." in writer["name"] else \
                f"{writer.get('namespace', '')}.{writer['name']}".lstrip(".")
            entry = self.codec.entry_named(name)
            self._entry_by_schema_id[schema_id] = entry
        return entry
