"""YAML loading that remembers where every key and value was written.

Validation errors must point at a line, so the loader keeps, for every path in the document
(``("pipeline", 1, "model")``), the line and column where it starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Position:
    """A 1-based line and column in a YAML file."""

    line: int
    column: int


@dataclass
class PositionedDocument:
    """Plain Python data parsed from YAML, plus the position of every path in it."""

    data: Any
    positions: dict[Path, Position] = field(default_factory=dict)

    def position_of(self, path: Path) -> Position:
        """Position of ``path``, or of its closest ancestor that was written in the file."""
        for end in range(len(path), -1, -1):
            position = self.positions.get(tuple(path[:end]))
            if position is not None:
                return position
        return Position(1, 1)


class YamlSyntaxError(ValueError):
    """The text is not valid YAML; carries the position the parser reported."""

    def __init__(self, message: str, position: Position):
        super().__init__(message)
        self.position = position


_SCALARS = yaml.constructor.SafeConstructor()


def _start(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


def _convert(node: yaml.Node, path: Path, positions: dict[Path, Position]) -> Any:
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _convert(key_node, path, {})
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise YamlSyntaxError(f"mapping keys must be strings, not {key!r}", _start(key_node))
            if key in result:
                raise YamlSyntaxError(f"duplicate key '{key}'", _start(key_node))
            child = (*path, key)
            # Point at the key for errors about the key, which is where a reader looks.
            positions[child] = _start(key_node)
            result[key] = _convert(value_node, child, positions)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            child = (*path, index)
            positions[child] = _start(item_node)
            items.append(_convert(item_node, child, positions))
        return items
    # A scalar: the resolver already tagged it (int, bool, null...); construct it the safe way.
    return _SCALARS.construct_object(node, deep=True)


def load_positioned_yaml(text: str) -> PositionedDocument:
    """Parse one YAML document, keeping the position of each key, item and value."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        position = Position(mark.line + 1, mark.column + 1) if mark else Position(1, 1)
        raise YamlSyntaxError(f"invalid YAML: {e.problem or e}", position) from e
    if root is None:
        return PositionedDocument(data=None)
    positions: dict[Path, Position] = {(): _start(root)}
    return PositionedDocument(data=_convert(root, (), positions), positions=positions)
