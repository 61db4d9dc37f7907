"""Everything that knows Kafka by name: client settings, topic specs and every topic, group and
transactional id (`topics.TopicNames`), and the admin calls that create and check topics."""
