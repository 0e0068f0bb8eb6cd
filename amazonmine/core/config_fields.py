"""What a config value may be: the typed fields the sections of :mod:`amazonmine.core.config` are made of.

Strict types: "epochs: true" or "epochs: 2.5" is a mistake, not 1 or 2 (pydantic's lax mode would take both). The
text YAML leaves as strings ("1e-4" in YAML 1.1, a quoted "3", "--set train.folds=0,2") is read first, by the
``BeforeValidator`` of each type. A field's help text, bounds and rules (:func:`setting`, :func:`ruled`) are what
its errors say and what the reference page and the JSON Schema show.
"""

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError


def whole(value: Any) -> Any:
    """An integer, or the text of one; a bool or a float is refused, not rounded."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:  # not an integer, or more digits than Python converts
            pass
    elif not isinstance(value, (bool, float)):
        return value  # an int, or what the strict check refuses as "expected an integer" itself
    raise PydanticCustomError("int_type", "expected an integer")


def _number(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    except (ValueError, OverflowError):  # not a number, or an integer past the largest float
        raise PydanticCustomError("float_type", "expected a number") from None


def _text(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise PydanticCustomError("nul", "a NUL character is not allowed")
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _switch(value: Any) -> Any:
    words = {"true": True, "yes": True, "1": True, "on": True, "false": False, "no": False, "0": False, "off": False}
    return words.get(value.lower(), value) if isinstance(value, str) else value


def ruled(base: Any, ok, says: str) -> Any:
    """``base`` with any other test of the (typed) value; ``says`` ("must ...") is the error and the docs."""
    def check(value: Any) -> Any:
        if not ok(value):
            raise ValueError(says)
        return value
    return Annotated[base, AfterValidator(check), Field(json_schema_extra={"x-rule": says})]


def ListOf(item: Any) -> Any:  # "a,b" is a list too
    return Annotated[list[item], BeforeValidator(lambda v: [s.strip() for s in v.split(",") if s.strip()]
                                                 if isinstance(v, str) else v)]


# An upper bound only there to refuse slips: the error says "at least 2" (not "in [2, 100]") below the range.
CAPPED = {"x-cap": True}


def setting(default: Any, help: str, cap: float | None = None, **bounds: float) -> Any:
    """A field: default, help text (its description in the docs), bounds; ``cap``, a maximum to refuse slips."""
    if cap is not None:
        bounds.update(le=cap, json_schema_extra=CAPPED)
    return Field(default, description=help, **bounds)


Int = Annotated[int, BeforeValidator(whole)]
Float = Annotated[float, BeforeValidator(_number)]
Bool = Annotated[bool, BeforeValidator(_switch)]
Text = Annotated[str, BeforeValidator(_text)]
Name = ruled(Text, lambda s: bool(s.strip()), "must not be empty")
# A label of the run's vocabulary (data.labels): which labels those are is checked across sections
# (Config._labels_in_vocabulary), so a run of its own labels can name them.
Label = Text
# Bounds inside a list or a mapping go before the validator, or the JSON Schema drops them.
Probability = Annotated[float, Field(ge=0, le=1), BeforeValidator(_number)]
Percentile = Annotated[float, Field(ge=0, le=100), BeforeValidator(_number)]
FoldNumber = Annotated[int, Field(ge=0, le=99, json_schema_extra=CAPPED), BeforeValidator(whole)]  # split.folds
# Every dense block but the last halves the side: 64 layers a block and 8 blocks are far past a "mini" DenseNet.
BlockLayers = Annotated[int, Field(ge=1, le=64, json_schema_extra=CAPPED), BeforeValidator(whole)]
# The value of a tune objective (a recall, a precision or a beta): a beta of 100 already weighs recall alone;
# 1e308 would overflow beta squared.
ObjectiveTarget = Annotated[float, Field(gt=0, le=100, json_schema_extra=CAPPED), BeforeValidator(_number)]
# "No weights" has one spelling after loading (null, "", none, ~); model.py compares with this constant only.
NO_WEIGHTS = "none"
Weights = Annotated[Text, BeforeValidator(lambda v: NO_WEIGHTS if v is None or (
    isinstance(v, str) and v.strip().lower() in ("", "none", "null", "~")) else v)]
# Caps, far past any real run and low enough that a slip is refused rather than allocated: 10,000 epochs;
# 8192 chips a batch (past any GPU's memory at 256 px); 4096 px (16 Planet chips); 1024 processes; a million.
EPOCHS, BATCH, PIXELS, WORKERS, MANY = 10_000, 8192, 4096, 1024, 1_000_000


def _plain_model_file(name: str) -> bool:  # written inside each fold's folder: a bare name lands nowhere else
    return ("/" not in name and "\\" not in name and ".." not in name
            and any(name.endswith(s) and len(name) > len(s) for s in (".h5", ".keras")))


ModelFileName = ruled(Text, _plain_model_file, "must be a plain file name ending in .h5 or .keras (no folder, "
                      "no '..')")


class Section(BaseModel):
    """A config section: unknown keys refused, each value of its exact type (after the readings above), no NaN."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
