"""Decisions from probabilities: per-label thresholds or expected-F2 decoding, operating points, calibration.

``tune`` fits the thresholds; ``predict``, ``evaluate`` and ``scan`` decide with them. Kaggle scores the mean
over images of F2, not a per-label metric, so the best threshold of a label depends on what the other labels
already predict for the same chips: a rare label's extra false alarm costs little on a chip that already has
five correct tags and a lot on a chip with one. The search is therefore coordinate ascent on the dataset's mean
F2: one label at a time, the other thresholds held, several passes.

One step is exact and cheap. With the other thresholds held, a chip's F2 takes only two values: one when the
label's probability clears the candidate threshold ("on") and one when it does not ("off"). Both come from
one decode each; the mean F2 at every candidate threshold is then the sum of the "off" scores plus the gains
(on - off) of the chips whose probability clears it, which a bincount and a reversed cumulative sum give for
all candidates at once (see scripts/bench_tune.py for its speed on a 40k x 17 matrix).

Weather decoding: Planet gives every chip exactly one weather label (clear, cloudy, haze, partly_cloudy) and a
cloudy chip no land label. With ``weather_decoding`` on, the weather is the argmax of the four weather
probabilities (their thresholds are unused) and a cloudy decision drops the land labels; the land thresholds
are fitted under that decoding. With it off, each label is thresholded on its own, and a chip with no weather
label above threshold still gets the most probable one, so every submitted chip has its weather label.

Expected-F2 decoding (``decoder: expected_f2``) needs no thresholds: per chip it predicts the label set with the
highest expected F2 under the model's probabilities, taken as independent. Under independence the best set of
any size k is the k likeliest labels (Lewis 1995; Ye, Chai, Lee and Chieu 2012, "Optimizing F-measure: a tale
of two approaches", ICML), so only 18 sets per chip are candidates, and the expected F2 of each is exact: the
number of true positives among the chosen labels and the number of missed labels among the others are
independent Poisson-binomial counts, whose distributions a running convolution gives (O(L^2) per set; the tests
check it against brute force over every label set). The same paper finds thresholds fitted on the data more
robust when the probabilities are off (correlated labels, miscalibration), which is why both decoders stay and
tune reports each cross-fitted. Weather decoding keeps its meaning: the weather is the argmax, treated as one
categorical label (exactly one weather is true, with the group's normalised probability), and a cloudy chip gets no land
label. Without it, the likeliest weather label is always predicted and the others compete like land labels.
The probabilities may first be recalibrated per label (:class:`Calibration`, fitted on the OOF), since the
decoder reads them as probabilities where thresholds only need their order.

Vocabularies: every function takes the run's ``labels`` (default the Planet 17); the weather rules above apply
only when all four weather labels are among them (:func:`amazonmine.core.data.weather_columns`), else every label is
thresholded, or ranked, on its own. Truth matrices may mark entries unannotated (-1): they count neither way in
any score (:mod:`amazonmine.core.metrics`), nor in a calibration's fit.

Operating points: a label given its own objective (a recall floor, a precision floor, or F-beta with another
beta) is decided by its own threshold under either decoder, fitted on the chips' own decisions
(:func:`operating_point`); the other labels are then fitted or decoded around it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from amazonmine.core.data import LABELS, WEATHER_LABELS, land_columns, weather_columns
from amazonmine.core.metrics import BETA, per_image_f2, truth_and_decisions

_CLOUDY = WEATHER_LABELS.index("cloudy")  # column of cloudy within the weather group
_TIE = 1e-12  # mean-F2 differences below this are ties (float noise of the cumulative sums)


def _truth(y_true) -> np.ndarray:
    """Labels as given, unannotated entries (-1) kept: the scores mask them (a plain cast to bool would not)."""
    y = np.asarray(y_true)
    return y.astype(bool) if y.dtype.kind == "u" else y


# --- decoding ----------------------------------------------------------------------------------------------

def _decode(probs: np.ndarray, thresholds: np.ndarray, weather_decoding: bool,
            labels=LABELS) -> np.ndarray:
    pred = probs >= thresholds
    weather = weather_columns(labels)
    if weather is None:  # no weather group in this vocabulary: every label on its own
        return pred
    weather_probs = probs[:, weather]
    top = np.zeros_like(weather_probs, dtype=bool)
    top[np.arange(len(probs)), weather_probs.argmax(axis=1)] = True
    if weather_decoding:
        pred[:, weather] = top
        pred[np.ix_(top[:, _CLOUDY], land_columns(labels))] = False
    else:
        none = ~pred[:, weather].any(axis=1)
        pred[np.ix_(none, weather)] = top[none]
    return pred


def decode(probs: np.ndarray, thresholds, weather_decoding: bool, labels=LABELS) -> np.ndarray:
    """(N, 17) probabilities -> (N, 17) bool decisions; a probability equal to its threshold counts as on.

    Every row gets at least one weather label; with ``weather_decoding`` exactly one, and none of the land
    labels when that one is cloudy. ``thresholds`` is 17 numbers, or a :class:`DecisionRule` (what
    ``RunFolder.read_thresholds`` returns): the rule then decides with its own decoder, calibration and
    weather decoding, so predict and scan follow whatever tune wrote.
    """
    if isinstance(thresholds, DecisionRule):
        return thresholds.decide(probs)
    probs = _check_probs(probs, labels)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (len(labels),):
        raise ValueError(f"expected {len(labels)} thresholds, got shape {thresholds.shape}")
    return _decode(probs, thresholds, weather_decoding, labels)


# --- the search --------------------------------------------------------------------------------------------

def _candidates(column: np.ndarray, grid: int, current: float) -> np.ndarray:
    # grid >= 3: the interior points of linspace(0, 1, grid) (0.01 steps for 101); grid == 0: every distinct
    # probability, the exact maximiser on the fitted chips. The current value is always a candidate, so a
    # step never lowers the objective.
    values = np.unique(column) if grid == 0 else np.linspace(0.0, 1.0, grid)[1:-1]
    return np.union1d(values, [current])


def _on_off_scores(y_true, probs, thresholds, j, weather_decoding, labels=LABELS):
    """Per-chip F2 with label j forced on and forced off, everything else decoded as usual."""
    t = thresholds.copy()
    t[j] = -np.inf
    on = per_image_f2(y_true, _decode(probs, t, weather_decoding, labels))
    t[j] = np.inf
    off = per_image_f2(y_true, _decode(probs, t, weather_decoding, labels))
    return on, off


def _curve(column, on, off, candidates):
    # A chip is "on" at candidate c_k iff p >= c_k iff k < (number of candidates <= p).
    n_below = np.searchsorted(candidates, column, side="right")
    gain_by_count = np.bincount(n_below, weights=on - off, minlength=len(candidates) + 1)
    gain = np.cumsum(gain_by_count[::-1])[::-1][1:]
    return (off.sum() + gain) / len(column)


def threshold_curve(y_true, probs, thresholds, j, grid=101, weather_decoding=True, labels=LABELS):
    """Mean F2 of the dataset as label j's threshold moves over the candidates, the others held.

    Returns (candidates, mean_f2) sorted by candidate. The curve the coordinate ascent climbs, and the one the
    report draws.
    """
    y_true = _truth(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    on, off = _on_off_scores(y_true, probs, thresholds, j, weather_decoding, labels)
    candidates = _candidates(probs[:, j], grid, thresholds[j])
    return candidates, _curve(probs[:, j], on, off, candidates)


def _best(candidates, scores, current):
    # Among ties, the candidate nearest the current threshold: keeps rare labels (flat curves) where they were.
    ties = np.flatnonzero(scores >= scores.max() - _TIE)
    return float(candidates[ties[np.argmin(np.abs(candidates[ties] - current))]])


def fit_thresholds(y_true, probs, start=0.2, passes=3, grid=101, weather_decoding=True,
                   hold: dict[int, float] | None = None, labels=LABELS) -> np.ndarray:
    """Coordinate ascent over labels on the mean per-image F2. Returns one threshold per label of ``labels``.

    ``grid`` >= 3 searches the interior of linspace(0, 1, grid); 0 searches every distinct probability.
    Under ``weather_decoding`` the weather thresholds do not affect the decisions and stay at ``start``.
    ``hold`` maps label index -> threshold for labels fixed elsewhere (operating points): they keep it, and the
    others are fitted around their decisions.
    """
    y_true = _truth(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_labels = len(labels)
    if y_true.shape != probs.shape or probs.ndim != 2 or probs.shape[1] != n_labels:
        raise ValueError(f"labels {y_true.shape} and probabilities {probs.shape} must both be (N, {n_labels})")
    thresholds = np.full(n_labels, float(start))
    hold = hold or {}
    for j, value in hold.items():
        thresholds[j] = value
    grouped = weather_decoding and weather_columns(labels) is not None
    columns = [j for j in (land_columns(labels) if grouped else range(n_labels)) if j not in hold]
    for _ in range(passes):
        changed = False
        for j in columns:
            candidates, scores = threshold_curve(y_true, probs, thresholds, j, grid, weather_decoding, labels)
            best = _best(candidates, scores, thresholds[j])
            changed |= best != thresholds[j]
            thresholds[j] = best
        if not changed:
            break
    return thresholds


# --- expected-F2 decoding ----------------------------------------------------------------------------------

_CHUNK = 4096  # chips per block: a block's count distributions stay a few MB


def _add_bernoulli(dist: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(N, D) distributions of a count -> those of the count plus an independent Bernoulli(p) per row."""
    out = dist * (1.0 - p)[:, None]
    out[:, 1:] += dist[:, :-1] * p[:, None]
    return out


def _fbeta_table(size: int, n_predicted: int, beta: float, extra_tp: int, extra_missed: int) -> np.ndarray:
    """[a, b]: F-beta of a chip with a (+ extra_tp) true positives and b (+ extra_missed) missed labels among
    n_predicted predictions. Nothing true and nothing predicted is a perfect row, as in per_image_f2."""
    b2 = beta * beta
    a = np.arange(size)[:, None] + extra_tp
    b = np.arange(size)[None, :] + extra_missed
    denom = b2 * (a + b) + n_predicted  # (1 + b2) TP + b2 FN + FP, with FP = predicted - TP
    return np.where(denom > 0, (1 + b2) * a / np.maximum(denom, 1e-12), 1.0)


def expected_fbeta_topk(probs, free, on, beta: float = BETA, hit=None) -> tuple[np.ndarray, np.ndarray]:
    """Exact expected F-beta of predicting the ``on`` labels plus the k likeliest ``free`` ones, k = 0..L.

    ``probs`` (N, L) are taken as independent; ``free`` and ``on`` (N, L) bool, disjoint. A label neither free
    nor on is predicted off; its probability still counts toward what is missed. ``hit`` (N,), optional: one
    more predicted label from a group with exactly one true member (the weather), right with this probability;
    when it is wrong, the group's true member is missed.

    Returns (expected, order): expected (N, L + 1), -inf where k exceeds the chip's free labels; order (N, L)
    the label columns, the free ones first by falling probability (the k of a set are ``order[:, :k]``).
    """
    probs = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    free = np.asarray(free, dtype=bool)
    on = np.asarray(on, dtype=bool) & ~free
    n, n_labels = probs.shape
    order = np.argsort(np.where(free, -probs, np.inf), axis=1, kind="stable")
    expected = np.empty((n, n_labels + 1))
    for start in range(0, n, _CHUNK):
        rows = slice(start, start + _CHUNK)
        expected[rows] = _expected_block(probs[rows], free[rows], on[rows], order[rows], beta,
                                         None if hit is None else np.asarray(hit, dtype=np.float64)[rows])
    expected[np.arange(n_labels + 1)[None, :] > free.sum(axis=1)[:, None]] = -np.inf
    return expected, order


def _expected_block(p, free, on, order, beta, hit) -> np.ndarray:
    n, n_labels = p.shape
    size = n_labels + 1  # a count of labels is 0..L
    start = np.zeros((n, size))
    start[:, 0] = 1.0
    tp, missed = start, start.copy()
    off = ~free & ~on
    for j in range(n_labels):
        tp = _add_bernoulli(tp, np.where(on[:, j], p[:, j], 0.0))
        missed = _add_bernoulli(missed, np.where(off[:, j], p[:, j], 0.0))
    # Non-free labels sort last with probability 0: they add nothing to either count.
    ranked = np.take_along_axis(np.where(free, p, 0.0), order, axis=1)
    prefix = np.empty((n_labels + 1, n, size))  # [k]: true positives among on + the k likeliest free labels
    prefix[0] = tp
    for k in range(1, n_labels + 1):
        prefix[k] = _add_bernoulli(prefix[k - 1], ranked[:, k - 1])
    suffix = np.empty((n_labels + 1, n, size))  # [k]: true labels among off + the free labels after the k-th
    suffix[n_labels] = missed
    for k in range(n_labels - 1, -1, -1):
        suffix[k] = _add_bernoulli(suffix[k + 1], ranked[:, k])
    n_on = on.sum(axis=1) + (0 if hit is None else 1)
    out = np.empty((n, n_labels + 1))
    for k in range(n_labels + 1):
        n_predicted = k + n_on
        for value in np.unique(n_predicted):
            rows = n_predicted == value
            tp_k, missed_k = prefix[k][rows], suffix[k][rows]
            if hit is None:
                out[rows, k] = _expectation(tp_k, _fbeta_table(size, value, beta, 0, 0), missed_k)
            else:
                right = _expectation(tp_k, _fbeta_table(size, value, beta, 1, 0), missed_k)
                wrong = _expectation(tp_k, _fbeta_table(size, value, beta, 0, 1), missed_k)
                out[rows, k] = hit[rows] * right + (1.0 - hit[rows]) * wrong
    return out


def _expectation(tp: np.ndarray, table: np.ndarray, missed: np.ndarray) -> np.ndarray:
    # einsum, not `@`: a multithreaded BLAS spends far longer starting threads than on an (N, 18) x (18, 18)
    # product, and worse on cores another job is using.
    return (np.einsum("na,ab->nb", tp, table) * missed).sum(axis=1)


def decode_expected_f2(probs, weather_decoding: bool, thresholds=None, fixed=None, calibration=None,
                       beta: float = BETA, labels=LABELS) -> tuple[np.ndarray, np.ndarray]:
    """(N, 17) probabilities -> ((N, 17) decisions of highest expected F-beta, (N,) that expectation).

    ``fixed`` (17,) bool marks labels decided by their ``thresholds`` instead (operating points). The
    expectation reads the ``calibration``-mapped probabilities; thresholds and the weather argmax read the raw
    ones, as :func:`decode` does, so both decoders agree on the weather of a chip.
    """
    raw = _check_probs(probs, labels)
    cal = calibration.apply(raw) if calibration is not None else raw
    weather = weather_columns(labels)
    if weather is None:
        weather_decoding = False
    n = len(raw)
    rows = np.arange(n)
    free = np.ones(raw.shape, dtype=bool)
    on = np.zeros(raw.shape, dtype=bool)
    if fixed is not None and np.any(fixed):
        fixed = np.asarray(fixed, dtype=bool)
        free[:, fixed] = False
        on[:, fixed] = raw[:, fixed] >= np.asarray(thresholds, dtype=np.float64)[fixed]
    top = None if weather is None else weather[raw[:, weather].argmax(axis=1)]
    p = cal.copy()
    hit = None
    if weather_decoding:
        land = land_columns(labels)
        free[:, weather] = on[:, weather] = False
        hit = cal[rows, top] / np.maximum(cal[:, weather].sum(axis=1), 1e-12)
        p[:, weather] = 0.0  # the group is counted through `hit`
        cloudy = top == weather[_CLOUDY]
        free[np.ix_(cloudy, land)] = on[np.ix_(cloudy, land)] = False
    elif top is not None:
        free[rows, top], on[rows, top] = False, True
    expected, order = expected_fbeta_topk(p, free, on, beta, hit)
    best = expected.argmax(axis=1)
    chosen = np.arange(len(labels))[None, :] < best[:, None]  # in rank order
    pred = on.copy()
    np.put_along_axis(pred, order, np.take_along_axis(pred, order, axis=1) | chosen, axis=1)
    if weather_decoding:
        pred[rows, top] = True
    return pred, expected[rows, best]


def _check_probs(probs, labels=LABELS) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"expected (N, {len(labels)}) probabilities, got shape {probs.shape}")
    return probs


# --- calibration -------------------------------------------------------------------------------------------

CALIBRATIONS = ("none", "temperature", "platt", "isotonic")
_EPS = 1e-6  # probabilities are clipped this far from 0 and 1 before a logit
_RIDGE = 1.0  # pulls a label with few positives toward the identity map instead of a separating fit


def expit(z: np.ndarray) -> np.ndarray:
    """The logistic function without overflow (scipy's would cost tune half a second of imports)."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


@dataclass
class Calibration:
    """A per-label increasing map of the model's probabilities: ``temperature`` scales the logit, ``platt``
    scales and shifts it, ``isotonic`` is a fitted step function (interpolated between its knots)."""

    kind: str = "none"
    scale: list[float] = field(default_factory=list)
    shift: list[float] = field(default_factory=list)
    knots: list[tuple[list[float], list[float]]] = field(default_factory=list)

    def apply(self, probs) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float64)
        if self.kind == "none":
            return probs
        if self.kind in ("temperature", "platt"):
            shift = np.asarray(self.shift) if self.shift else 0.0
            return expit(_logit(probs) * np.asarray(self.scale) + shift)
        out = np.empty_like(probs)
        for j, (x, y) in enumerate(self.knots):
            out[:, j] = np.interp(probs[:, j], x, y)
        return out

    def to_json(self, labels=LABELS) -> dict:
        saved: dict = {"kind": self.kind}
        if self.kind in ("temperature", "platt"):
            saved["scale"] = dict(zip(labels, (round(float(v), 6) for v in self.scale)))
        if self.kind == "platt":
            saved["shift"] = dict(zip(labels, (round(float(v), 6) for v in self.shift)))
        if self.kind == "isotonic":
            # Unrounded: two knots a hair apart would round onto one x with two y values.
            saved["knots"] = {name: [[float(v) for v in x], [float(v) for v in y]]
                              for name, (x, y) in zip(labels, self.knots)}
        return saved

    @classmethod
    def from_json(cls, saved, labels=LABELS) -> "Calibration":
        """The inverse of :meth:`to_json`; ValueError says what is wrong."""
        if not isinstance(saved, dict) or saved.get("kind") not in CALIBRATIONS:
            raise ValueError(f"calibration must name a kind among {', '.join(CALIBRATIONS)}, got {saved!r}")
        kind = saved["kind"]
        try:
            if kind in ("temperature", "platt"):
                scale = [float(saved["scale"][name]) for name in labels]
                shift = [float(saved["shift"][name]) for name in labels] if kind == "platt" else []
                if not np.isfinite(scale + shift).all():
                    raise ValueError("calibration parameters must be finite numbers")
                return cls(kind, scale, shift)
            if kind == "isotonic":
                knots = []
                for name in labels:
                    x, y = (np.asarray(v, dtype=np.float64) for v in saved["knots"][name])
                    if x.ndim != 1 or x.shape != y.shape or len(x) == 0 or np.any(np.diff(x) < 0):
                        raise ValueError(f"isotonic knots of {name} must be two equal, non-empty, sorted lists")
                    knots.append((x.tolist(), y.tolist()))
                return cls(kind, knots=knots)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{kind} calibration incomplete ({type(exc).__name__}: {exc})") from None
        return cls()


def fit_calibration(y_true, probs, kind: str) -> Calibration:
    """Fit a :class:`Calibration` of ``kind`` per label by log loss (temperature, Platt) or least squares
    (isotonic, scikit-learn) on (N, L) labels and probabilities; unannotated entries (-1) are left out."""
    if kind not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {kind!r}")
    positive, negative, _ = truth_and_decisions(y_true, np.zeros(np.shape(y_true), bool))
    y, known = positive.astype(np.float64), (positive | negative).astype(np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    if kind == "none":
        return Calibration()
    if kind == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        knots = []
        for j in range(probs.shape[1]):
            rows = known[:, j] > 0
            if not rows.any():  # never annotated: the identity map
                knots.append(([0.0, 1.0], [0.0, 1.0]))
                continue
            fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs[rows, j], y[rows, j])
            knots.append((fit.X_thresholds_.tolist(), fit.y_thresholds_.tolist()))
        return Calibration("isotonic", knots=knots)
    scale, shift = _fit_logistic(y, _logit(probs), with_shift=kind == "platt", known=known)
    return Calibration(kind, scale.tolist(), shift.tolist() if kind == "platt" else [])


def _fit_logistic(y: np.ndarray, z: np.ndarray, with_shift: bool, steps: int = 100, known=None):
    """Per column, a and b minimising the log loss of sigmoid(a z + b) plus a ridge toward (1, 0): Newton's
    method on all columns at once, each step halved until it lowers that column's loss (a full step overshoots
    on labels the model nearly separates, such as cloudy). ``known`` (0/1, like ``y``) weighs each entry: an
    unannotated one adds nothing."""
    n_labels = z.shape[1]
    a, b = np.ones(n_labels), np.zeros(n_labels)
    known = np.ones_like(y) if known is None else known

    def loss(a, b):
        t = a * z + b
        return ((np.logaddexp(0.0, t) - y * t) * known).sum(axis=0) + 0.5 * _RIDGE * ((a - 1) ** 2 + b ** 2)

    current = loss(a, b)
    for _ in range(steps):
        s = expit(a * z + b)
        r, w = (s - y) * known, s * (1 - s) * known
        g_a = (r * z).sum(axis=0) + _RIDGE * (a - 1)
        h_aa = (w * z * z).sum(axis=0) + _RIDGE
        if with_shift:
            g_b = r.sum(axis=0) + _RIDGE * b
            h_ab, h_bb = (w * z).sum(axis=0), w.sum(axis=0) + _RIDGE
            det = h_aa * h_bb - h_ab * h_ab
            step_a, step_b = (h_bb * g_a - h_ab * g_b) / det, (h_aa * g_b - h_ab * g_a) / det
        else:
            step_a, step_b = g_a / h_aa, np.zeros(n_labels)
        size = np.ones(n_labels)
        for _ in range(40):
            trial = loss(a - size * step_a, b - size * step_b)
            worse = trial > current
            if not worse.any():
                break
            size[worse] /= 2
        a, b = a - size * step_a, b - size * step_b
        current = loss(a, b)
        if max(np.abs(size * step_a).max(), np.abs(size * step_b).max()) < 1e-9:
            break
    return a, b


# --- operating points --------------------------------------------------------------------------------------

OBJECTIVES = ("recall", "precision", "fbeta")
_T_MIN, _T_MAX = 1e-9, 1 - 1e-9  # thresholds.json keeps thresholds strictly inside (0, 1)


@dataclass(frozen=True)
class Objective:
    """A label's own target: ``recall`` or ``precision`` at least ``value``, or the best F-beta, beta = value."""

    kind: str
    value: float

    def describe(self) -> str:
        return f"F{self.value:g}" if self.kind == "fbeta" else f"{self.kind} >= {self.value:g}"

    def to_json(self) -> dict:
        return {self.kind: self.value}


def parse_objectives(spec, labels=LABELS) -> dict[int, Objective]:
    """{label: {"recall": 0.9}} (the config's tune.objectives, thresholds.json's objectives) -> {column:
    Objective}. ValueError names the entry that is wrong."""
    out = {}
    index = {name: j for j, name in enumerate(labels)}
    grouped = weather_columns(labels) is not None
    for name, entry in (spec or {}).items():
        if name not in index:
            raise ValueError(f"objectives: unknown label {name!r} (known: {', '.join(labels)})")
        if grouped and name in WEATHER_LABELS:
            raise ValueError(f"objectives: {name} is a weather label, decided with its group, not on its own")
        example = f"one of {', '.join(OBJECTIVES)} with a number, e.g. {{recall: 0.9}}"
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"objectives.{name}: expected {example}, got {entry!r}")
        ((kind, value),) = entry.items()
        if kind not in OBJECTIVES:
            raise ValueError(f"objectives.{name}: {kind!r} is not {example}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"objectives.{name}.{kind} must be a number, got {value!r}")
        if kind in ("recall", "precision") and not 0 < value <= 1:
            raise ValueError(f"objectives.{name}.{kind} must be in (0, 1], got {value}")
        if kind == "fbeta" and value <= 0:
            raise ValueError(f"objectives.{name}.fbeta must be a positive beta, got {value}")
        out[index[name]] = Objective(kind, float(value))
    return out


@dataclass(frozen=True)
class OperatingPoint:
    """One label's threshold and what is known of it. tune measures precision and recall on the chips it fitted
    the threshold on (NaN where nothing was measured); scan adds the stricter threshold a lone tile must clear
    (``isolated``) and where the threshold came from (``source``)."""

    threshold: float
    precision: float = float("nan")
    recall: float = float("nan")
    met: bool = True  # the floor is reached on the chips it was fitted on (always true for F-beta)
    isolated: float | None = None
    source: str = ""


def _sum_above(column: np.ndarray, weights: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """sum(weights[column >= c]) for every sorted candidate c."""
    n_below = np.searchsorted(candidates, column, side="right")
    by_count = np.bincount(n_below, weights=weights, minlength=len(candidates) + 1)
    return np.cumsum(by_count[::-1])[::-1][1:]


def label_curve_counts(y_true, probs, thresholds, j: int, weather_decoding: bool, labels=LABELS):
    """Label j decided as decode decides it, at every candidate threshold (each distinct probability, clipped
    into (0, 1), and the two extremes): returns (candidates, true positives, predicted, positives). Chips never
    annotated for label j count in none of them."""
    positive, negative, _ = truth_and_decisions(_truth(y_true), np.zeros(np.shape(y_true), bool))
    known = (positive | negative)[:, j].astype(np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    t = np.array(thresholds, dtype=np.float64)
    t[j] = -np.inf
    on = _decode(probs, t, weather_decoding, labels)[:, j].astype(np.float64) * known
    t[j] = np.inf
    off = _decode(probs, t, weather_decoding, labels)[:, j].astype(np.float64) * known
    column, truth = probs[:, j], positive[:, j].astype(np.float64)
    candidates = np.union1d(np.clip(column, _T_MIN, _T_MAX), [_T_MIN, _T_MAX])
    tp = (truth * off).sum() + _sum_above(column, truth * (on - off), candidates)
    predicted = off.sum() + _sum_above(column, on - off, candidates)
    return candidates, tp, predicted, float(truth.sum())


def operating_point(y_true, probs, thresholds, j: int, objective: Objective,
                    weather_decoding: bool, labels=LABELS) -> OperatingPoint:
    """Label j's threshold for its objective, exact on these chips: every distinct probability is a candidate,
    and the label is decided as decode decides it (under weather decoding a cloudy chip keeps no land label
    whatever the threshold, so a recall floor may be out of reach: then ``met`` is false).

    Recall floor: the highest threshold that still reaches it (the most precise such point). Precision floor:
    the lowest threshold that keeps it (the most recall). F-beta: the threshold of the best F-beta.
    """
    candidates, tp, predicted, positives = label_curve_counts(y_true, probs, thresholds, j, weather_decoding,
                                                              labels)
    recall = tp / positives if positives else np.ones(len(candidates))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, np.nan)
    met = True
    if objective.kind == "recall":
        ok = np.flatnonzero(recall >= objective.value - 1e-12)
        k = ok[-1] if ok.size else int(np.flatnonzero(recall == recall.max())[-1])
        met = bool(ok.size)
    elif objective.kind == "precision":
        ok = np.flatnonzero(precision >= objective.value - 1e-12)
        k = ok[0] if ok.size else int(np.nanargmax(np.nan_to_num(precision, nan=-1.0)))
        met = bool(ok.size)
    else:
        b2 = objective.value ** 2
        denom = b2 * positives + predicted
        fbeta = np.divide((1 + b2) * tp, denom, out=np.zeros(len(candidates)), where=denom > 0)
        k = int(np.argmax(fbeta))
    # Halfway down to the next lower probability decides these chips exactly as candidate k does, and keeps the
    # decisions when the same probabilities come back a little off (a float32 CSV, 6 decimals in predict's).
    threshold = candidates[k] if k == 0 else 0.5 * (candidates[k - 1] + candidates[k])
    return OperatingPoint(float(threshold), float(np.nan_to_num(precision[k])), float(recall[k]), met)


# --- the rule tune writes ----------------------------------------------------------------------------------

DECODERS = ("thresholds", "expected_f2")


@dataclass
class DecisionRule:
    """Everything decode needs, as tune writes it to thresholds.json: the thresholds, weather decoding, the
    decoder, its calibration and the labels held at their operating points (decided by threshold under
    either decoder), over the vocabulary ``labels``."""

    thresholds: np.ndarray
    weather_decoding: bool
    decoder: str = "thresholds"
    calibration: Calibration = field(default_factory=Calibration)
    fixed: np.ndarray | None = None  # None: no label held
    labels: tuple[str, ...] = LABELS

    def __post_init__(self):
        self.labels = tuple(self.labels)
        n_labels = len(self.labels)
        self.thresholds = np.asarray(self.thresholds, dtype=np.float64)
        self.fixed = np.zeros(n_labels, dtype=bool) if self.fixed is None else np.asarray(self.fixed, dtype=bool)
        if self.thresholds.shape != (n_labels,) or self.fixed.shape != (n_labels,):
            raise ValueError(f"expected {n_labels} thresholds, got shape {self.thresholds.shape}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")

    def __array__(self, dtype=None, copy=None):
        # Code written for the bare 17 thresholds (tables, curves, a scan's per-label override) keeps working.
        return np.array(self.thresholds, dtype=dtype)

    def decide(self, probs) -> np.ndarray:
        probs = _check_probs(probs, self.labels)
        if self.decoder == "thresholds":
            return _decode(probs, self.thresholds, self.weather_decoding, self.labels)
        return decode_expected_f2(probs, self.weather_decoding, self.thresholds, self.fixed, self.calibration,
                                  labels=self.labels)[0]

    def with_decoder(self, decoder: str, calibration: str, y_true, probs) -> "DecisionRule":
        """The same thresholds and operating points under ``decoder`` (its calibration of kind ``calibration``
        fitted on ``y_true``, ``probs``): the expected-F2 decoder uses the thresholds of the held labels only,
        so one threshold fit serves both."""
        if decoder == "thresholds":
            return DecisionRule(self.thresholds, self.weather_decoding, "thresholds", Calibration(), self.fixed,
                                self.labels)
        return DecisionRule(self.thresholds, self.weather_decoding, decoder,
                            fit_calibration(y_true, probs, calibration), self.fixed, self.labels)

    def describe(self) -> str:
        if self.decoder == "thresholds":
            text = "per-label thresholds"
        else:
            cal = "" if self.calibration.kind == "none" else f", {self.calibration.kind} calibration"
            text = f"expected-F2 decoding{cal}"
        held = [name for name, f in zip(self.labels, self.fixed) if f]
        return text + (f"; operating points for {', '.join(held)}" if held else "")

    @classmethod
    def from_saved(cls, saved: dict, thresholds, weather_decoding: bool, labels=LABELS) -> "DecisionRule":
        """The rule of a thresholds.json whose thresholds and weather flag are already read; a file written
        before decoders existed decides by thresholds. ValueError says what is wrong."""
        decoder = saved.get("decoder", "thresholds")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        calibration = Calibration.from_json(saved.get("calibration") or {"kind": "none"}, labels)
        objectives = parse_objectives(saved.get("objectives") or {}, labels)
        fixed = np.isin(np.arange(len(labels)), list(objectives))
        return cls(np.asarray(thresholds, dtype=np.float64), bool(weather_decoding), decoder, calibration, fixed,
                   labels)


def fit_rule(y_true, probs,  # noqa: PLR0913 - public: each keyword is one tune.* setting with its default
             weather_decoding: bool, decoder: str = "thresholds", calibration: str = "none",
             objectives: dict[int, Objective] | None = None, start: float = 0.2, passes: int = 3,
             grid: int = 101, labels=LABELS) -> tuple[DecisionRule, dict[int, OperatingPoint]]:
    """The whole fit tune makes: each label with an objective at its operating point, the others' thresholds
    by coordinate ascent around them, and the decoder's calibration. Returns the rule and the points."""
    y_true = _truth(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    objectives = objectives or {}
    # Only land labels take objectives, and a land label's decisions depend on the weather argmax alone, not on
    # the other thresholds: its point is final before the others are fitted.
    flat = np.full(len(labels), float(start))
    points = {j: operating_point(y_true, probs, flat, j, obj, weather_decoding, labels)
              for j, obj in objectives.items()}
    thresholds = fit_thresholds(y_true, probs, start, passes, grid, weather_decoding,
                                hold={j: point.threshold for j, point in points.items()}, labels=labels)
    fixed = np.isin(np.arange(len(labels)), list(points))
    fitted = fit_calibration(y_true, probs, calibration) if decoder == "expected_f2" else Calibration()
    return DecisionRule(thresholds, weather_decoding, decoder, fitted, fixed, labels), points
