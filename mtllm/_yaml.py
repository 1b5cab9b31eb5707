"""Reading YAML written by users (configs, ``--key value`` flags, task files): PyYAML's safe loader with the rules
that keep a typed value as the user wrote it and a small document small (:class:`_ConfigLoader`). A ground-layer
module: settings and task files both read YAML through :func:`load_document`."""
from __future__ import annotations

from typing import Any

import yaml

__all__ = ["MAX_YAML_DEPTH", "Refused", "load_document"]

#: How deep a config or a ``--key value`` may nest (a config is flat, with one level of stage sections):
#: PyYAML's composer recurses once per level, and thousands of levels overflow Python's stack.
MAX_YAML_DEPTH = 20

_STR_TAG = "tag:yaml.org,2002:str"
#: The tags YAML 1.1 resolves plain scalars to besides text and null: ``007`` -> 7, ``1.10`` -> 1.1,
#: ``yes`` -> True, ``2024-06-01`` -> a date.
_TYPED_TAGS = frozenset(f"tag:yaml.org,2002:{t}" for t in ("int", "float", "bool", "timestamp"))


class Refused(Exception):
    """A YAML document that mtllm does not build (:class:`_ConfigLoader`); the message completes "FILE ..." or
    "--key ..."."""


def _as_text(node: yaml.Node) -> yaml.Node:
    """``node`` with each scalar that YAML would type (a number, a boolean, a date: :data:`_TYPED_TAGS`), alone or
    as an item of a list, tagged as a string instead: it is constructed as the text the user wrote."""
    if isinstance(node, yaml.ScalarNode) and node.tag in _TYPED_TAGS:
        return yaml.ScalarNode(_STR_TAG, node.value, node.start_mark, node.end_mark, node.style)
    if isinstance(node, yaml.SequenceNode):
        return yaml.SequenceNode(node.tag, [_as_text(item) for item in node.value], node.start_mark, node.end_mark,
                                 node.flow_style)
    return node


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader (only plain data: a ``!!python/...`` tag is an error), with three rules for settings.

    * A value under a string-typed key (``strings``: paths, names; :func:`string_keys`) keeps its text:
      PyYAML resolves a plain scalar's type from its text alone (``output_dir: 007`` -> 7 -> ``"7"``, ``1.10``
      -> ``"1.1"``, ``2024-06-01`` -> a date), and has no per-key resolution, so such a value's node (or its
      list's items) is retagged as a string before it is constructed (:func:`_as_text`). ``null`` and ``~`` stay
      null; every other key's value is typed as YAML reads it, and then checked against its field's type.
    * No aliases (``*name``): an alias repeats an anchored value, so a few nested ones (a "billion laughs"
      document) make billions of values once the settings are checked, hashed or printed; configs share
      settings through ``base:`` instead. The first alias is refused before anything is built.
    * At most :data:`MAX_YAML_DEPTH` levels of nesting, checked as each node is composed."""

    def __init__(self, stream: str, strings: frozenset[str] = frozenset()) -> None:
        super().__init__(stream)
        self.strings, self.depth = strings, 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise Refused(f"uses the YAML alias *{event.anchor} (line {event.start_mark.line + 1}); mtllm configs "
                           f"take no aliases, which can expand a few lines into billions of values: write the value "
                           f"out (a config shares another's settings with base: other.yaml)")
        if self.depth >= MAX_YAML_DEPTH:
            raise Refused(f"nests deeper than {MAX_YAML_DEPTH} levels (line {event.start_mark.line + 1}); a config is "
                           f"flat key: value pairs, with one level of stage sections (finetune:, ...)")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        node.value = [(key, _as_text(value) if isinstance(key, yaml.ScalarNode) and key.value in self.strings
                       else value) for key, value in node.value]
        return super().construct_mapping(node, deep=deep)


def load_document(text: str, strings: frozenset[str] = frozenset(), *, as_text: bool = False) -> Any:
    """One YAML document read by :class:`_ConfigLoader`; ``as_text``: the document is itself the value of a
    string-typed key. Raises ``yaml.YAMLError`` (not YAML, or a ``!!python/...`` tag) or :class:`Refused`."""
    loader = _ConfigLoader(text, strings)
    try:
        node = loader.get_single_node()
        return None if node is None else loader.construct_document(_as_text(node) if as_text else node)
    finally:
        loader.dispose()
