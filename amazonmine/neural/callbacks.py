"""The Keras callbacks of one fold's ``fit``, each usable and testable on its own.

:func:`amazonmine.neural.fitting.fold_callbacks` puts them in order with Keras' own (CSV history, TensorBoard,
early stopping, plateau). This module imports Keras when it is imported, so only code that is about to train
imports it (``fold_callbacks`` does, inside the function).
"""

from __future__ import annotations

import logging
import time

import keras

from amazonmine.core.io import atomic_path, stamp_h5
from amazonmine.neural.fitting import epoch_line

log = logging.getLogger(__name__)


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model whenever val F2 beats the best so far (which survives a resume), atomically, stamped with
    its score and epoch.

    ``resume_state`` (a :class:`amazonmine.core.fold_plan.ResumeState`, or None) is told each epoch's best score;
    ``averaged`` (with ``train.ema``) is the callback that swaps the averaged weights in, since those are the
    weights that were validated.
    """

    def __init__(self, path, best: float, averaged=None, resume_state=None):
        super().__init__()
        self.path, self.best, self.best_epoch = path, best, None
        self.averaged = averaged
        self.resume_state = resume_state

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get("val_f2")
        if score is not None and score > self.best:
            self.best, self.best_epoch = float(score), epoch + 1
            if self.averaged is not None:
                self.averaged.on_test_begin()  # swaps the averaged weights in, as for validation
            try:
                with atomic_path(self.path) as tmp:
                    self.model.save(tmp, include_optimizer=False)
                    # The file carries its own score: a kill before the resume state records it must not
                    # let a resumed run overwrite it with a worse epoch (ResumeState.restore reads it).
                    loss = (logs or {}).get("val_loss")
                    stamp_h5(tmp, val_f2=self.best, epoch=self.best_epoch,
                             **({"val_loss": float(loss)} if loss is not None else {}))
            finally:
                if self.averaged is not None:
                    self.averaged.on_test_end()  # and the raw ones back, which training continues from
        if self.resume_state is not None:
            self.resume_state.best = self.best


class Throughput(keras.callbacks.Callback):
    """Training images per second, timed from epoch start to the start of validation."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size, self.seconds, self.images = batch_size, 0.0, 0
        self._t0, self._steps = None, 0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0, self._steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_test_begin(self, logs=None):
        if self._t0 is not None:
            self.seconds += time.perf_counter() - self._t0
            self.images += self._steps * self.batch_size
            self._t0 = None


class ResumeSaver(keras.callbacks.Callback):
    """Save ``resume_state`` (a :class:`amazonmine.core.fold_plan.ResumeState`) after every epoch. When early
    stopping has ended training, the state says the fold's ``epochs`` are done, so that an interrupt from here
    on resumes into finishing the fold, not into one more epoch."""

    def __init__(self, resume_state, epochs: int):
        super().__init__()
        self.resume_state, self.epochs = resume_state, epochs

    def on_epoch_end(self, epoch, logs=None):
        self.resume_state.save(self.model, epoch + 1)
        if self.model.stop_training:
            self.resume_state.save_progress(self.epochs)


class CarriedCounters(keras.callbacks.Callback):
    """Put the counters a resume carries (``resume_state.counters``: early stopping's and the plateau's wait,
    best, ...) back into their callbacks at the start of ``fit``, after those callbacks have reset them.

    ``counted`` maps a name to (callback, the attributes carried), as :func:`counters` reads them back.
    """

    def __init__(self, resume_state, counted: dict):
        super().__init__()
        self.resume_state, self.counted = resume_state, counted

    def on_train_begin(self, logs=None):
        for name, values in self.resume_state.counters.items():
            if name in self.counted:
                for attr, value in values.items():
                    setattr(self.counted[name][0], attr, value)


def counters(counted: dict, carried: dict) -> dict:
    """The current counters of ``counted`` (name -> (callback, attributes)) as plain floats or None. A fit that
    never began (a resume after the last epoch) has none of its own: the ``carried`` ones stand."""
    return {name: ({attr: None if getattr(cb, attr) is None else float(getattr(cb, attr)) for attr in attrs}
                   if all(hasattr(cb, attr) for attr in attrs) else carried.get(name, {}))
            for name, (cb, attrs) in counted.items()}


class EpochProgress(keras.callbacks.Callback):
    """One line per epoch with the time left, for runs where Keras prints nothing (verbose 0): a fold of
    many minutes must not look like a hang."""

    def __init__(self, fold: int, small_epochs: int):
        super().__init__()
        self.fold, self.small_epochs, self._started, self._epoch_began = fold, small_epochs, None, None
        self._seconds = {True: [], False: []}  # small epochs', full-size epochs' durations this session

    def on_train_begin(self, logs=None):
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        log.info(f"fold {self.fold}: training, {epochs} epochs" + (f" of {steps} steps" if steps else ""))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_began = time.perf_counter()
        if self._started is None:
            self._started = self._epoch_began

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self._seconds[epoch < self.small_epochs].append(now - self._epoch_began)

        def pace(small: bool) -> float | None:
            # The first epoch of each size also traces its graphs; once later ones are timed, they set it.
            timed = self._seconds[small]
            return sum(timed[1:] or timed) / len(timed[1:] or timed) if timed else None

        epochs, done = self.params.get("epochs") or epoch + 1, epoch + 1
        small_left = max(0, self.small_epochs - done)
        full_left = epochs - done - small_left
        small_pace, full_pace = pace(True), pace(False)
        # Before a full-size epoch is timed, the small pace stands in for it: a floor, and said so.
        left = small_left * (small_pace or 0.0) + full_left * (full_pace or small_pace or 0.0)
        log.info(epoch_line(self.fold, done, epochs, logs or {}, now - self._started, left,
                              at_least=full_left > 0 and full_pace is None))
