"""Shared server code of vivavoce's model workers (no pipecat: workers have their own environments)."""
