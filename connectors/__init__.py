"""I/O shells around the pure core: the RabbitMQ -> Kafka shovel and Kafka administration."""
