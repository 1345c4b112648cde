"""The topic catalog: the one place that names Kafka topics."""

from topics.catalog import TopicSpec, catalog, dlq_topic, event_topics, topic_for_family

__all__ = ["TopicSpec", "catalog", "dlq_topic", "event_topics", "topic_for_family"]
