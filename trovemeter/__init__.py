"""trovemeter: OpenStack Trove notifications to billing-grade records on Kafka.

This package is the pure core shared by the shovel (connectors/) and the Faust
app (streams/): settings, the event model, parsing and the Avro codec. Nothing
in it imports Kafka, RabbitMQ or Faust clients.
"""

__version__ = "0.1.0"
