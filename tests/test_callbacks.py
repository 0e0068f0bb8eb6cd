"""Each of a fold's callbacks on its own (amazonmine.neural.callbacks): driven by hand with a tiny model, no fit."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")


def _tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(17, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    return model


class _State:
    """What the callbacks use of a ResumeState: the best score, the carried counters, saves recorded."""

    def __init__(self, counters=None):
        self.best, self.counters, self.saved, self.progress = -1.0, counters or {}, [], []

    def save(self, model, epoch):
        self.saved.append(epoch)

    def save_progress(self, epoch):
        self.progress.append(epoch)


def test_best_checkpoint_saves_only_improvements_stamped_with_score_and_epoch(tmp_path):
    from amazonmine.core.io import read_h5_stamp
    from amazonmine.neural.callbacks import BestCheckpoint

    path, state = tmp_path / "best.h5", _State()  # a run folder keeps its folds as HDF5
    best = BestCheckpoint(path, 0.5, resume_state=state)
    best.set_model(_tiny_model())
    best.on_epoch_end(0, {"val_f2": 0.4})  # below the best carried in from a resume: nothing written
    assert not path.exists() and state.best == 0.5 and best.best_epoch is None
    best.on_epoch_end(1, {"val_f2": 0.7, "val_loss": 0.3})
    assert path.is_file() and (best.best, best.best_epoch, state.best) == (0.7, 2, 0.7)
    assert read_h5_stamp(path) == pytest.approx({"val_f2": 0.7, "epoch": 2.0, "val_loss": 0.3})
    written = path.stat().st_mtime_ns
    best.on_epoch_end(2, {"val_f2": 0.6})
    assert path.stat().st_mtime_ns == written and best.best_epoch == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.h5"]  # no temporary file left behind


def test_best_checkpoint_saves_the_validated_averaged_weights_and_puts_the_raw_ones_back(tmp_path):
    from amazonmine.neural.callbacks import BestCheckpoint

    calls = []

    class Swap:
        def on_test_begin(self):
            calls.append("averaged in")

        def on_test_end(self):
            calls.append("raw back")

    best = BestCheckpoint(tmp_path / "best.keras", -1.0, averaged=Swap())
    best.set_model(_tiny_model())
    best.on_epoch_end(0, {"val_f2": 0.2})
    assert calls == ["averaged in", "raw back"] and (tmp_path / "best.keras").is_file()


def test_throughput_counts_training_steps_up_to_validation_only():
    from amazonmine.neural.callbacks import Throughput

    meter = Throughput(batch_size=32)
    for epoch in range(2):
        meter.on_epoch_begin(epoch)
        for step in range(3):
            meter.on_train_batch_end(step)
        meter.on_test_begin()
        meter.on_train_batch_end(99)  # after validation began: not this epoch's training
        meter.on_test_begin()  # a second validation pass in the same epoch adds nothing
    assert meter.images == 2 * 3 * 32 and meter.seconds > 0


def test_resume_saver_saves_each_epoch_and_marks_the_fold_done_when_training_stopped():
    from amazonmine.neural.callbacks import ResumeSaver

    state, model = _State(), _tiny_model()
    saver = ResumeSaver(state, epochs=10)
    saver.set_model(model)
    saver.on_epoch_end(0)
    assert state.saved == [1] and state.progress == []
    model.stop_training = True  # early stopping ended the fit after epoch 4
    saver.on_epoch_end(3)
    assert state.saved == [1, 4] and state.progress == [10]


def test_carried_counters_go_back_into_their_callbacks_and_are_read_back():
    from amazonmine.neural.callbacks import CarriedCounters, counters

    stopping = keras.callbacks.EarlyStopping(monitor="val_f2", mode="max", patience=3)
    stopping.on_train_begin()  # Keras resets its counters here, before the carried ones go back
    counted = {"early_stopping": (stopping, ("wait", "best", "best_epoch"))}
    carried = {"early_stopping": {"wait": 2.0, "best": 0.81, "best_epoch": 5.0}, "plateau": {"wait": 1.0}}
    CarriedCounters(_State(carried), counted).on_train_begin()
    assert (stopping.wait, stopping.best, stopping.best_epoch) == (2.0, 0.81, 5.0)
    assert counters(counted, carried) == {"early_stopping": {"wait": 2.0, "best": 0.81, "best_epoch": 5.0}}
    # A callback whose fit never began has none of the attributes yet: the carried values stand.
    fresh = {"plateau": (keras.callbacks.Callback(), ("wait",))}
    assert counters(fresh, carried) == {"plateau": {"wait": 1.0}}


def test_epoch_progress_prints_the_start_and_one_line_per_epoch(caplog):
    from amazonmine.neural.callbacks import EpochProgress

    caplog.set_level("INFO", logger="amazonmine")  # the lines are logged; the CLI shows INFO by default

    progress = EpochProgress(fold=2, small_epochs=0)
    progress.set_params({"epochs": 3, "steps": 5})
    progress.on_train_begin()
    for epoch in range(2):
        progress.on_epoch_begin(epoch)
        progress.on_epoch_end(epoch, {"loss": 0.5, "val_f2": np.float32(0.75)})
    out = caplog.messages
    assert out[0] == "fold 2: training, 3 epochs of 5 steps"
    assert [line.split("  ")[0] for line in out[1:]] == ["fold 2: epoch 1/3", "fold 2: epoch 2/3"]
    assert "val_f2 0.7500" in out[1] and out[2].endswith("left")
