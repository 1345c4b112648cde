"""Sinks: one module per external system, behind one small protocol (:mod:`sinks.base`)."""
