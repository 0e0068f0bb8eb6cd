"""Keras parts of training: the streamed F2 agrees with the NumPy one, the soft F2 loss, the per-epoch progress
lines, precise BatchNorm."""

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_mean_f2_metric_agrees_with_the_numpy_score():
    from amazonmine.core.metrics import mean_f2
    from amazonmine.neural.fitting import FLAT_THRESHOLD, make_metric

    rng = np.random.default_rng(3)
    y = rng.random((64, 17)) < 0.2
    y[:4] = False  # rows with nothing to find: scored 1 when nothing is claimed either
    p = rng.random((64, 17)).astype(np.float32)
    p[:2] = 0.0
    metric = make_metric()
    metric.update_state(y[:40], p[:40])
    metric.update_state(y[40:], p[40:])  # streamed over two batches
    np.testing.assert_allclose(float(metric.result()), mean_f2(y, p >= FLAT_THRESHOLD), rtol=1e-6)


def test_soft_f2_loss_on_hard_predictions_is_bce_plus_the_f2_gap():
    import keras

    from amazonmine.core.config import load_config
    from amazonmine.core.metrics import mean_f2
    from amazonmine.neural.fitting import make_loss

    cfg = load_config(None, ["train.soft_f2_weight=0.5", "train.label_smoothing=0"])
    rng = np.random.default_rng(4)
    y = (rng.random((32, 17)) < 0.3).astype(np.float32)
    p = np.clip(y + (rng.random((32, 17)) < 0.1), 0, 1).astype(np.float32)  # a few false alarms
    p[p == 0] = 1e-4
    loss = float(make_loss(cfg.train)(y, p))
    bce = float(keras.losses.BinaryCrossentropy()(y, p))
    np.testing.assert_allclose(loss, bce + 0.5 * (1 - mean_f2(y > 0, p > 0.5)), atol=2e-3)


def test_epoch_line_says_where_the_fold_is_and_the_time_left():
    from amazonmine.neural.fitting import clock, epoch_line

    assert [clock(s) for s in (0.4, 42, 245, 4020)] == ["0s", "42s", "4m05s", "1h07m"]
    line = epoch_line(2, 3, 10, {"loss": 0.12345, "val_f2": 0.8}, elapsed=90.0, seconds_left=210.0)
    assert line == "fold 2: epoch 3/10  loss 0.1235  val_f2 0.8000  1m30s elapsed, ~3m30s left"
    assert epoch_line(2, 3, 10, {}, elapsed=90.0, seconds_left=210.0, at_least=True).endswith(", over 3m30s left")
    assert epoch_line(0, 10, 10, {}, elapsed=20.0, seconds_left=0.0) == \
        "fold 0: epoch 10/10  loss -  val_f2 -  20s elapsed"  # the last epoch: nothing left to estimate


@pytest.mark.parametrize("verbose", [0, 2])
def test_progress_lines_only_when_keras_prints_nothing(tmp_path, caplog, verbose):
    import keras

    caplog.set_level("INFO", logger="amazonmine")  # the lines are logged; the CLI shows INFO by default

    from amazonmine.core.config import load_config
    from amazonmine.core.fold_plan import ResumeState
    from amazonmine.core.runfolder import RunFolder
    from amazonmine.neural.fitting import fold_callbacks, make_metric

    cfg = load_config(None, [f"train.verbose={verbose}", f"run.dir={tmp_path}"])
    files = RunFolder.from_config(cfg).fold(3)
    files.dir.mkdir()
    callbacks, _, _ = fold_callbacks(files, cfg.train, -1.0, ResumeState(files))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(17, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=[make_metric()])
    x = np.random.default_rng(0).random((16, 4)).astype(np.float32)
    y = (x[:, :1] > 0.5).repeat(17, axis=1).astype(np.float32)
    model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=8, callbacks=callbacks, verbose=verbose)
    out = "\n".join(caplog.messages)
    lines = [line for line in out.splitlines() if line.startswith("fold 3: epoch")]
    if verbose == 0:
        assert len(lines) == 2 and lines[0].startswith("fold 3: epoch 1/2  loss ") and "left" in lines[0]
        assert "fold 3: training, 2 epochs" in out
    else:
        assert not lines and "fold 3: training" not in out
    assert files.model.is_file() and files.history.is_file() and files.resume_meta.is_file()


def test_precise_batchnorm_replaces_moving_stats_with_the_batch_average():
    import keras
    import tensorflow as tf

    from amazonmine.neural.fitting import recalibrate_batchnorm

    inner = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn")])
    # nested, as the backbone is; dropout after it, as in the head
    model = keras.Sequential([keras.Input((3,)), inner, keras.layers.Dropout(0.5, seed=3, name="drop")])
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc, 1.0, (16, 3)).astype(np.float32) for loc in (1.0, 5.0, 9.0)]
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(16)
    dropout_state = model.get_layer("drop").seed_generator.state
    before = keras.ops.convert_to_numpy(dropout_state).copy()
    assert recalibrate_batchnorm(model, dataset, 3) == 1
    bn = inner.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(0) for b in batches], axis=0), rtol=1e-4)
    assert bn.momentum == 0.99  # restored
    # Its training-mode passes drew dropout masks; the random state is put back, so training's masks are
    # the ones it would have drawn without the recalibration.
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(dropout_state), before)
    model(batches[0], training=True)
    assert not np.array_equal(keras.ops.convert_to_numpy(dropout_state), before)  # a draw does move it


def test_trim_history_keeps_the_rows_a_resume_continues_from(tmp_path):
    from amazonmine.neural.fitting import trim_history

    history = tmp_path / "history.csv"
    rows = "epoch,f2,loss\r\n0,0.5,0.123456789012\r\n1,0.6,0.1\r\n2,0.7,0.0\r\n"
    history.write_bytes((rows + "1").encode())  # the row of epoch 13, cut short by a kill after its first digit
    trim_history(history, 3)
    assert history.read_bytes().decode() == rows  # the rows as written, their numbers untouched
    trim_history(history, 2)  # a row written after the last saved resume state: that epoch is redone
    assert history.read_bytes().decode() == "epoch,f2,loss\r\n0,0.5,0.123456789012\r\n1,0.6,0.1\r\n"
    trim_history(tmp_path / "missing.csv", 1)


@pytest.fixture
def interrupt_handlers():
    """Python's own Ctrl-C handler (KeyboardInterrupt) and SIGTERM's default, whatever this process inherited.

    A process started in the background by a non-interactive shell (``pytest ... &`` beside a CPU hog, nohup, some
    CI runners) inherits SIGINT ignored, and Python then leaves it ignored: a Ctrl-C test that took the handler
    in place for granted found no KeyboardInterrupt there (issue 35, 'DID NOT RAISE KeyboardInterrupt')."""
    import signal

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def test_an_interrupt_during_a_weight_swap_is_delivered_once_the_swap_and_its_flag_are_done(monkeypatch,
                                                                                               interrupt_handlers):
    import signal

    import keras

    from amazonmine.neural.fitting import averaged_weights

    steps = []

    def swap(self):  # Keras' swap, variable by variable; the signal lands half-way
        steps.append("first half")
        # Sent to this thread and handled before raise_signal returns: it lands here, not whenever the kernel
        # and the interpreter get to it (os.kill's signal may go to any of TensorFlow's threads, and be handled
        # after the swap on a busy machine).
        signal.raise_signal(signal.SIGINT)
        steps.append("second half")

    monkeypatch.setattr(keras.callbacks.SwapEMAWeights, "_swap_variables", swap)
    callback = averaged_weights(None, 0)
    with pytest.raises(KeyboardInterrupt):
        callback.on_test_begin()
    # Swapped whole, and flagged so, before the interrupt: its clean-up (on_test_end) swaps back.
    assert steps == ["first half", "second half"] and callback._ema_weights_in_model
    with pytest.raises(KeyboardInterrupt):
        callback.on_test_end()
    assert len(steps) == 4 and not callback._ema_weights_in_model
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_landing_while_the_held_handlers_are_put_back_leaves_every_handler_restored(monkeypatch,
                                                                                              interrupt_handlers):
    # signal.signal runs the handlers of signals already received before it changes one: a Ctrl-C that lands
    # just after SIGINT's handler is back runs inside the call that puts SIGTERM's back. It must still be put back.
    import signal

    from amazonmine.neural.fitting import interrupts_held

    original = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    real_signal = signal.signal
    landed = []

    def restoring(sig, handler):
        if sig == signal.SIGTERM and handler is original[sig] and not landed:
            # As CPython does when a Ctrl-C is pending: SIGINT's handler, back already, runs before this call
            # changes anything (and raises KeyboardInterrupt).
            landed.append(sig)
            signal.raise_signal(signal.SIGINT)
        return real_signal(sig, handler)

    monkeypatch.setattr(signal, "signal", restoring)
    try:
        with pytest.raises(KeyboardInterrupt):
            with interrupts_held():
                pass
        assert landed == [signal.SIGTERM]
        assert {sig: signal.getsignal(sig) for sig in original} == original
    finally:
        for sig, handler in original.items():
            real_signal(sig, handler)


def test_a_ctrl_c_the_process_ignores_stays_ignored_through_a_hold(interrupt_handlers):
    # A run started with nohup or '&' ignores Ctrl-C: holding it during a swap must not turn it into an interrupt.
    import signal

    from amazonmine.neural.fitting import interrupts_held

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with interrupts_held():
        signal.raise_signal(signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_progress_lines_say_the_time_left_is_a_floor_until_a_full_size_epoch_is_timed(tmp_path, caplog):
    import keras

    caplog.set_level("INFO", logger="amazonmine")

    from amazonmine.core.config import load_config
    from amazonmine.core.fold_plan import ResumeState
    from amazonmine.neural.fitting import fold_callbacks

    cfg = load_config(None, ["train.verbose=0", f"run.dir={tmp_path}", "train.epochs=4", "train.small_size=32",
                             "train.image_size=48", "train.small_epochs=2"])
    files = _fold_folder(cfg)
    callbacks, _, _ = fold_callbacks(files, cfg.train, -1.0, ResumeState(files))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(17, activation="sigmoid")])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    x = np.random.default_rng(0).random((16, 4)).astype(np.float32)
    model.fit(x, x[:, :1].repeat(17, axis=1), epochs=4, batch_size=8, callbacks=callbacks, verbose=0)
    lines = [line for line in caplog.messages if line.startswith("fold 0: epoch")]
    assert [("over " in line, "~" in line) for line in lines] == [(True, False), (True, False), (False, True),
                                                                  (False, False)]


def _fold_folder(cfg):
    from amazonmine.core.runfolder import RunFolder

    files = RunFolder.from_config(cfg).fold(0)
    files.dir.mkdir()
    return files


@pytest.mark.parametrize("schedule", ["cosine", "one_cycle"])
def test_learning_rate_schedules_start_peak_and_end_where_documented(schedule):
    from amazonmine.core.config import load_config
    from amazonmine.neural.fitting import ONE_CYCLE_DIV, ONE_CYCLE_FINAL_DIV, make_optimizer

    cfg = load_config(None, [f"train.schedule={schedule}", "train.epochs=10", "train.warmup_epochs=1",
                             "train.learning_rate=0.004", "train.one_cycle_warmup=0.3"])
    steps_per_epoch = 50
    optimizer = make_optimizer(cfg.train, steps_per_epoch)

    def rate(step):  # the schedule's rate at this step (the last step applied is last_step - 1)
        optimizer.iterations.assign(step)
        return float(optimizer.learning_rate)

    peak_step, last_step = (150, 500) if schedule == "one_cycle" else (50, 500)
    at = {step: rate(step) for step in range(0, last_step + 1, 5)}
    start, end = (0.004 / ONE_CYCLE_DIV, 0.004 / ONE_CYCLE_DIV / ONE_CYCLE_FINAL_DIV) if schedule == "one_cycle" \
        else (0.0004, 0.004 * 0.01)
    np.testing.assert_allclose([at[0], at[peak_step], at[last_step]], [start, 0.004, end], rtol=1e-4)
    assert max(at, key=at.get) == peak_step
    rising = [at[s] for s in at if s <= peak_step]
    falling = [at[s] for s in at if s >= peak_step]
    assert np.all(np.diff(rising) > 0) and np.all(np.diff(falling) < 0)
