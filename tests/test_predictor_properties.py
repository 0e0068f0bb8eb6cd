"""A property of the predictor's input checks, over arrays Hypothesis draws: whatever array it is given (any dtype
of nine, 0 to 5 dimensions, any sides and band counts, NaN, infinities, negatives), ``predict`` either returns
finite probabilities in [0, 1], one row per chip, or raises the project's own error in one line. Never another
exception, never NaN, never a float array read as pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e '.[test]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

from amazonmine.core.data import LABELS  # noqa: E402
from amazonmine.core.errors import AmazonmineError  # noqa: E402

pytestmark = pytest.mark.slow

DTYPES = ["bool", "int8", "int16", "uint8", "uint16", "int32", "float16", "float32", "float64"]
SIDE = 40  # chips up to 40 px: every side is resized to the model's 32, so bigger ones test nothing more


@pytest.fixture(scope="module")
def predictor():
    """An untrained tiny model of 3-band JPEG chips: its probabilities mean nothing, but are probabilities."""
    from amazonmine.core.config import load_config
    from amazonmine.neural.model import build_model
    from amazonmine.neural.predictor import Predictor

    cfg = load_config(None, ["train.backbone=densenet_mini", "train.mini_blocks=[1]", "train.image_size=32",
                             "train.weights=none"])
    return Predictor(models=[build_model(cfg.train)], model_paths=[Path("untrained.h5")], image_size=32,
                     channels=3, batch_size=8)


@st.composite
def anything_like_chips(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if draw(st.booleans()):  # near the shape predict takes: (N, side, side, 3), with now and then one thing off
        side = draw(st.integers(1, SIDE))
        width = side if draw(st.integers(0, 4)) else draw(st.integers(1, SIDE))
        shape = (draw(st.integers(0, 3)), side, width, draw(st.sampled_from([3, 3, 3, 1, 4])))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=5)))
    elements = None  # the dtype's whole range: NaN, infinities, negatives, the extremes
    if dtype.kind in "iu" and draw(st.booleans()):
        # integers that are 8-bit pixels in another dtype (as many as it holds)
        elements = st.integers(0, min(255, int(np.iinfo(dtype).max)))
    elif dtype.kind == "f" and draw(st.booleans()):
        elements = st.floats(0, 1, width=dtype.itemsize * 8)  # the 0-1 floats a notebook might pass
    array = draw(arrays(dtype, shape, elements=elements))
    return list(array) if array.ndim and draw(st.booleans()) else array


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(chips=anything_like_chips())
def test_any_array_predicts_probabilities_or_is_refused_in_one_line(predictor, chips):
    array = np.asarray(chips[0]) if isinstance(chips, list) and chips else np.asarray(chips)
    try:
        probs = predictor.predict(chips)
    except AmazonmineError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 300, text
        # Raw pixels of the right shape are never refused.
        assert not (array.dtype == np.uint8 and array.ndim == (3 if isinstance(chips, list) else 4)
                    and array.shape[-3] == array.shape[-2] >= 1 and array.shape[-1] == 3), text
        return
    assert probs.dtype == np.float32 and probs.shape == (len(chips), len(LABELS))
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    if len(probs):
        assert array.dtype.kind in "iu", f"{array.dtype} chips were read as pixels"


@st.composite
def anything_like_probabilities(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES + ["U3", "O"])))
    if draw(st.booleans()):
        shape = (draw(st.integers(0, 4)), draw(st.sampled_from([len(LABELS)] * 4 + [1, 16, 18])))
    else:
        shape = tuple(draw(st.lists(st.integers(0, 20), max_size=3)))
    elements = st.floats(0, 1, width=dtype.itemsize * 8) if dtype.kind == "f" and draw(st.booleans()) else None
    if dtype.kind in "UO":
        elements = st.sampled_from(["0.5", "x", "", None]) if dtype.kind == "O" else st.sampled_from(["0.5", "x"])
    return draw(arrays(dtype, shape, elements=elements))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(probs=anything_like_probabilities())
def test_decide_takes_probabilities_or_refuses_in_one_line(predictor, probs):
    import dataclasses

    tuned = dataclasses.replace(predictor, thresholds=np.full(len(LABELS), 0.5))
    try:
        decided = tuned.decide(probs)
    except AmazonmineError as exc:
        text = str(exc)
        assert text and "\n" not in text and len(text) < 300, text
        return
    assert probs.ndim == 2 and probs.shape[1] == len(LABELS) and probs.dtype.kind in "fiub"
    assert decided.shape == probs.shape
    as_float = probs.astype(np.float64)
    assert np.isfinite(as_float).all() and (as_float >= 0).all() and (as_float <= 1).all()
