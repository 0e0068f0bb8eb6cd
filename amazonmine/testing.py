"""Stand-ins that only tests and benchmarks use; nothing in a run imports this module.

* :func:`simulate_oof` -- probabilities shaped like a network's out-of-fold output, without a model.
* :func:`free_loopback_ports` -- free TCP ports on 127.0.0.1, for cluster workers started on one machine.
"""

from __future__ import annotations

import numpy as np

from amazonmine.core.data import LABELS

# How well a typical Planet CNN separates each label (positive-class shift of a unit-noise score); rare and
# subtle labels are hard. Rough shape of the competition's per-label F2, not measured on a model.
_SKILL = {
    "agriculture": 2.6, "artisinal_mine": 2.4, "bare_ground": 1.3, "blooming": 1.0, "blow_down": 0.8,
    "clear": 3.0, "cloudy": 3.4, "conventional_mine": 1.8, "cultivation": 1.4, "habitation": 2.0, "haze": 2.0,
    "partly_cloudy": 3.0, "primary": 3.4, "road": 2.1, "selective_logging": 1.2, "slash_burn": 0.9, "water": 2.1,
}


def simulate_oof(y_true: np.ndarray, seed: int = 0) -> np.ndarray:
    """Probabilities shaped like a CNN's out-of-fold output, for tests and the benchmark (no model needed).

    Each label's score is its truth shifted by a per-label skill plus noise (partly shared by the chip, as a
    hazy or dark chip is hard for every label); the calibrated probability is then mis-scaled and shifted per
    label, as real networks are (over-confident on common labels, timid on rare ones), so the best
    thresholds differ by label and from 0.2.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y_true, dtype=np.float64)
    skill = np.array([_SKILL[name] for name in LABELS])
    prior = np.clip(y.mean(axis=0), 1e-4, 1 - 1e-4)
    noise = 0.85 * rng.standard_normal(y.shape) + 0.5 * rng.standard_normal((len(y), 1))
    score = skill * y + noise
    logit = skill * score - skill**2 / 2 + np.log(prior / (1 - prior))
    temperature = rng.uniform(0.6, 1.6, len(LABELS))
    shift = rng.normal(0.0, 0.8, len(LABELS)) - 0.6 * (prior < 0.02)
    return 1.0 / (1.0 + np.exp(-(temperature * logit + shift)))


def free_loopback_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1, for workers started on one machine (tests, benchmarks)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
