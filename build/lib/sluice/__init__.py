"""Sluice: route taxonomy-typed Avro events and keep a lean ClickHouse OLAP."""

__version__ = "0.1.0"
