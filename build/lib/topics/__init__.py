"""The contract's names: the event taxonomy, every Kafka topic, the dead-letter format."""

from topics.catalog import Catalog, TopicSpec

__all__ = ["Catalog", "TopicSpec"]
