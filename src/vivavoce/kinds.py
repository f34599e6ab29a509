"""The process-wide kind registries: the built-in processors and transports, then the installed plugins."""

from __future__ import annotations

from vivavoce.processors.catalog import BUILTIN_KINDS
from vivavoce.registry import ProcessorRegistry, TransportRegistry
from vivavoce.transports.catalog import BUILTIN_TRANSPORTS

processors = ProcessorRegistry(BUILTIN_KINDS)
"""Processor kinds: what a pipeline entry's ``kind`` may name."""

transports = TransportRegistry(BUILTIN_TRANSPORTS)
"""Transport kinds: what the ``transport`` section's ``kind`` may name."""
