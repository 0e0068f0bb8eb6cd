"""Reading a config's YAML: the semantics of ``yaml.safe_load``, hardened.

The loader also refuses what no config needs and what would let a file hang or exhaust the machine: duplicate
keys, nesting deeper than :data:`MAX_DEPTH`, aliases expanding past :data:`MAX_NODES` nodes ("billion laughs"),
files that are not UTF-8 or larger than :data:`MAX_CONFIG_BYTES`. ``--set`` values go through the same loader
(:func:`parse_override`). Every refusal is a :class:`~amazonmine.core.config_errors.ConfigError` naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from amazonmine.core.config_errors import ConfigError, quote, short

MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 20  # a config is a few levels deep (section, key, list, mapping)
MAX_NODES = 10_000  # counting every node an alias expands to


class _Refused(yaml.composer.ComposerError):
    """YAML that parses but that no config needs (too deep, too many nodes through aliases)."""


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys, deep nesting and alias bombs while composing, before
    any Python object is built. An alias counts as every node it stands for, so nine levels of nine aliases
    each are refused after a few thousand steps instead of expanding to 9**9 nodes downstream."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it expands to, once composed

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _Refused(None, None, f"more than {MAX_NODES:,} nodes once aliases are expanded", mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:  # an undefined alias is yaml's own error
                if id(node) not in self._sizes:
                    raise _Refused(None, None, f"alias *{short(event.anchor)} refers to a node containing it",
                                   event.start_mark)
                self._count(self._sizes[id(node)], event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        before = self._nodes
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # "<<: *base" may be overridden, by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                except TypeError:  # an unhashable key: yaml's own error follows
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {quote(key)}",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``text`` as ``yaml.safe_load`` reads it, or an error for what the hardened loader refuses."""
    loader = _ConfigLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _yaml_problem(exc: Exception) -> str:
    """'at line N (what)' for a YAML error, on one line and short."""
    mark = getattr(exc, "problem_mark", None)
    at = f" at line {mark.line + 1}" if mark is not None else ""
    what = getattr(exc, "problem", None) or getattr(exc, "reason", None)
    if what is None and not isinstance(exc, yaml.YAMLError):
        what = str(exc)  # e.g. an integer of more digits than Python converts
    what = " ".join(str(what).split()) if what else ""
    return f"{at} ({short(what)})" if what else at


def _read_config_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES >> 20} MiB; not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                          "save the config as UTF-8") from None


def parse_override(text: str) -> Any:
    """An override's value as YAML (so "--set train.folds=[0,1]" works like the file), else the text itself."""
    if not text.strip():
        return ""
    try:
        parsed = load_yaml(text)
    except (yaml.YAMLError, ValueError):
        return text
    return text if parsed is None else parsed


def read_sections(path: Path) -> dict:
    """The config file's top-level mapping (section -> body), {} for an empty file."""
    text = _read_config_text(path)
    try:
        raw = load_yaml(text)
    except _Refused as exc:
        raise ConfigError(f"{path}: YAML refused{_yaml_problem(exc)}") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid YAML{_yaml_problem(exc)}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw or {}
