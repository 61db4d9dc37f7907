"""Development helpers: the local single-node Kafka broker and the demo app and its runner."""
