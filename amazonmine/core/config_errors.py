"""A config problem as one line: the source that gave the value (the file, or the ``--set``), the key, the value
(quoted briefly) and what is wrong, with "did you mean" for a near miss.

:mod:`amazonmine.core.config` validates with pydantic and hands the first error here with the config's JSON Schema,
which says a field's bounds and choices in the words the message uses (the reference page uses the same words,
:func:`bounds_phrase`). Only pydantic's error records are read: this module knows no config section by name.
"""

from __future__ import annotations

import difflib
import reprlib
from typing import Any

from pydantic import BaseModel, ValidationError

from amazonmine.core.errors import AmazonmineError


class ConfigError(AmazonmineError):
    """A config file or override that cannot be used."""


class Conflict(ValueError):
    """Settings that cannot go together; ``keys`` say which, so the error names the --set of one."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxdict, _QUOTE.maxstring, _QUOTE.maxother = 3, 6, 4, 60, 60
QUOTE_CHARS = 60
_EXPECTED = {"int_type": "expected an integer", "float_type": "expected a number", "bool_type": "expected true/false",
             "finite_number": "expected a finite number", "string_type": "expected a string",
             "list_type": "expected a list", "dict_type": "expected a mapping", "model_type": "expected a mapping"}
_BOUNDS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def short(text: str, limit: int = QUOTE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def quote(value: Any) -> str:
    """repr of a value from the input, cut short: the value may be huge, and the message is one line."""
    return short(_QUOTE.repr(value))


def key_name(text: Any) -> str:
    """A key or section as typed, on one line and short."""
    return short(repr(str(text))[1:-1])


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def bounds_phrase(node: dict) -> str:
    """'in [0, 1]', 'at least 2', 'positive', ... from a JSON Schema node ('' when it has no bounds)."""
    lo, hi = node.get("exclusiveMinimum", node.get("minimum")), node.get("exclusiveMaximum", node.get("maximum"))
    open_lo, open_hi = "exclusiveMinimum" in node, "exclusiveMaximum" in node
    if lo is not None and hi is not None:
        return f"in {'(' if open_lo else '['}{_num(lo)}, {_num(hi)}{')' if open_hi else ']'}"
    if lo is not None:
        return ("positive" if lo == 0 else f"more than {_num(lo)}") if open_lo else f"at least {_num(lo)}"
    return (f"less than {_num(hi)}" if open_hi else f"at most {_num(hi)}") if hi is not None else ""


def _schema_at(schema: dict, loc: tuple) -> dict:
    """The JSON Schema node of the value at a pydantic error location (of the keys, for a mapping's key)."""
    keys = loc[-1:] == ("[key]",)
    node, defs = schema, schema["$defs"]
    for part in loc[:-2] if keys else loc:
        node = defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
        node = node.get("properties", {}).get(part) or node.get("items") or node.get("additionalProperties") or {}
    node = defs[node["$ref"].rsplit("/", 1)[1]] if "$ref" in node else node
    return node.get("propertyNames", {}) if keys else node


def _problem(err: dict, schema: dict) -> tuple[str, str, str]:
    """(what is wrong, ", got <value>", a hint) for an error that is about one value."""
    loc, kind, ctx, value = err["loc"], err["type"], err.get("ctx") or {}, err["input"]
    got, hint = f", got {quote(value)}", ""
    if kind in _EXPECTED:
        problem = f": {_EXPECTED[kind]}"
    elif kind in _BOUNDS:
        node = _schema_at(schema, loc)
        if node.get("x-cap"):  # below the range the cap is beside the point, and above it the floor is
            drop = ("maximum", "exclusiveMaximum") if kind.startswith("greater") else ("minimum", "exclusiveMinimum")
            node = {k: v for k, v in node.items() if k not in drop}
        problem = f" must be {bounds_phrase(node)}"
    elif kind == "literal_error":
        choices = _schema_at(schema, loc).get("enum", [])
        problem = f" must be one of {', '.join(map(str, choices))}"
        close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) and len(value) < 100 else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
    elif kind == "value_error":
        problem = f" {ctx.get('error')}"
    elif kind == "too_long":
        problem, got = f" must hold at most {ctx['max_length']} items", f", got {ctx.get('actual_length')}"
    else:
        problem = f": {short(' '.join(err['msg'].split()), 100)}"
    return problem, got, hint


def one_line(err: dict, sources: dict[str, str], default: str, schema: dict) -> ConfigError:
    """A pydantic error as one line: the source that gave the value, the key, the value, the problem.

    ``sources`` maps "section.key" to where its value came from (in the order applied); ``default`` is the
    source of everything else; ``schema`` is the whole config's JSON Schema.
    """
    loc, kind, ctx = err["loc"], err["type"], err.get("ctx") or {}
    conflict = ctx.get("error")
    if isinstance(conflict, Conflict):
        return ConfigError(f"{([s for k, s in sources.items() if k in conflict.keys] or [default])[-1]}: {conflict}")
    source = sources.get(".".join(map(str, loc[:2])), default)
    if kind == "extra_forbidden" and len(loc) == 2:
        known = list(_schema_at(schema, loc[:1]).get("properties", {}))
        close = difflib.get_close_matches(str(loc[1]), known, n=3) if len(str(loc[1])) < 100 else []
        hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(known)}"
        return ConfigError(f"{source}: unknown key '{loc[0]}.{key_name(loc[1])}' ({hint})")
    keys = loc[-1:] == ("[key]",)  # a mapping's key, not its value
    # A mapping's keys come from the file (scan.min_probability's labels): cut and escaped like any value.
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{key_name(p)}" for p in (loc[:-2] if keys else loc))
    where = where.lstrip(".") + (" keys" if keys else "")
    problem, got, hint = _problem(err, schema)
    return ConfigError(f"{source}: {where}{problem}{got}{hint}")


def validated(model: type[BaseModel], raw: dict, sources: dict[str, str], default: str, schema: dict,
              prefix: tuple = ()) -> Any:
    """``model`` validated from ``raw``, or the first problem as a :class:`ConfigError` (:func:`one_line`);
    ``prefix`` is where ``model`` sits in the whole config (a section's name)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        raise one_line({**err, "loc": prefix + err["loc"]}, sources, default, schema) from None
