"""The config's documentation, rendered from its JSON Schema: the reference page (every key of every section with
its type, allowed values in the words the errors use, :func:`amazonmine.core.config_errors.bounds_phrase`, default
and description) and the schema file for editors. The docs build (``docs/hooks.py``) publishes both."""

from __future__ import annotations

import copy
import json

from amazonmine.core.config import SECTIONS, config_schema
from amazonmine.core.config_errors import bounds_phrase


def json_schema() -> dict:
    """The JSON Schema of a config file. Two extension keywords: ``x-cap`` marks a maximum that is only there to
    refuse slips (not a limit of the method), ``x-rule`` states a test beyond bounds and choices."""
    return copy.deepcopy(config_schema())


def _type_of(node: dict) -> str:
    if node.get("type") == "array":
        return f"list of {_type_of(node['items'])}"
    if node.get("type") == "object":
        return f"mapping {_type_of(node.get('propertyNames', {'type': 'string'}))} -> " \
               f"{_type_of(node['additionalProperties'])}"
    return {"integer": "integer", "number": "number", "boolean": "true/false"}.get(node.get("type", ""), "text")


def _allowed(node: dict) -> str:
    if "enum" in node:
        parts = ["one of " + ", ".join(f"`{v}`" for v in node["enum"])]
    elif node.get("type") == "array":
        each = _allowed(node["items"])
        parts = [f"at most {node['maxItems']} items" if "maxItems" in node else "", each and f"each {each}"]
    elif node.get("type") == "object":
        keys, values = _allowed(node.get("propertyNames", {})), _allowed(node["additionalProperties"])
        parts = [keys and f"keys {keys}", values and f"values {values}"]
    else:
        parts = [bounds_phrase(node)]
    return "; ".join(filter(None, [*parts, node.get("x-rule", "").replace("must be ", "")]))


def reference_markdown() -> str:
    """Every key of every section as Markdown tables: type, allowed values, default, description."""
    schema = config_schema()
    out = ["# Configuration reference", "",
           "Generated from `amazonmine/core/config.py` (`amazonmine.core.config_reference.reference_markdown()`). Set "
           "a key in the YAML file given to `--config`, or on the command line with `--set section.key=value`."]
    for section, model in SECTIONS.items():
        out += ["", f"## `{section}`", "", model.__doc__ or "", "",
                "| Key | Type | Allowed | Default | Description |", "| --- | --- | --- | --- | --- |"]
        for key, node in schema["$defs"][model.__name__]["properties"].items():
            default = node.get("default")
            shown = default if isinstance(default, str) and default else json.dumps(default)
            cells = [f"`{key}`", _type_of(node), _allowed(node) or "any", f"`{shown}`", node.get("description", "")]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out) + "\n"
