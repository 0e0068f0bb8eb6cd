"""Training across machines: two worker processes over loopback train one model, refuse to mix, survive a death.

Each test starts real ``amazonmine train`` processes with ``TF_CONFIG`` (127.0.0.1, free ports), on the tiny
mini model, so the engine is TensorFlow's own MultiWorkerMirroredStrategy end to end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from amazonmine.cli import EXIT_ERROR
from amazonmine.neural.cluster import ClusterError, Membership, read_membership
from amazonmine.testing import free_loopback_ports

GLOBAL_BATCH = 16
TINY = ["dehaze.enabled=false", "split.folds=2", "split.rare_target=4", "train.backbone=densenet_mini",
        "train.weights=none", "train.mini_blocks=[2]", "train.image_size=32", "train.epochs=2",
        "train.steps_per_epoch=3", "train.warmup_epochs=0", "train.verbose=0", "train.cache=true",
        "train.bn_recalibration_batches=2", "predict.tta=1", "predict.batch_size=16"]
# How long a worker may take to notice that another one died (connection closed: seconds; a silent machine:
# TensorFlow's heartbeat timeout), plus this loaded machine's start-up and exit.
STOP_BOUND = 60.0
# Not a measured bound, only how long to wait before calling a worker hung: generous, because a machine
# running other jobs beside the suite has made two workers' start-up and first epoch take over 150 s.
HUNG = 300.0
DIGEST = re.compile(r"weights sha256 ([0-9a-f]{16,})")
# Under pytest-xdist these tests run one after another on one worker (each starts two TensorFlow processes on
# free loopback ports), beside at most the other workers' in-process tests.
pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from amazonmine.stages.synth import paint_dataset

    root = tmp_path_factory.mktemp("mw") / "data"
    paint_dataset(root, n_train=48, n_test=4, size=32, seed=7, progress=False)
    return root


def split_run(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A run folder with its split made; returns the --set values naming it."""
    from amazonmine.core.config import load_config
    from amazonmine.stages.split import run_split

    sets = TINY + [f"data.root={data_root}", f"run.dir={run_dir}", *extra]
    run_split(load_config(None, sets))
    return sets


class Workers:
    """``amazonmine train`` on two local workers, each with its own TF_CONFIG, temp folder and log files."""

    def __init__(self, base: Path, args_of: list[list[str]]):
        ports = free_loopback_ports(len(args_of))
        self.base, self.procs, self.logs, self.tmpdirs = base, [], [], []
        for index, args in enumerate(args_of):
            tmp = base / f"tmp{index}"
            tmp.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the command's own default
            env.update({"CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(tmp), "TF_CONFIG": json.dumps({
                "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                "task": {"type": "worker", "index": index}})})
            out, err = base / f"worker{index}.out", base / f"worker{index}.err"
            self.logs.append((out, err))
            self.tmpdirs.append(tmp)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "amazonmine.cli", "train", *args], env=env,
                stdout=open(out, "w"), stderr=open(err, "w"), cwd=base))

    def wait(self, timeout: float = HUNG) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        for proc in self.procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"workers still running after {timeout:.0f} s:\n{self.report()}")
        return codes

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def output(self, index: int) -> tuple[str, str]:
        out, err = self.logs[index]
        return out.read_text(), err.read_text()

    def report(self) -> str:
        return "\n".join(f"--- worker {i} stdout:\n{o}\n--- worker {i} stderr:\n{e[-3000:]}"
                         for i, (o, e) in enumerate(self.output(i) for i in range(len(self.procs))))


def sets_args(sets: list[str], *flags: str) -> list[str]:
    return [a for s in sets for a in ("--set", s)] + list(flags)


@pytest.mark.slow
def test_two_workers_train_one_model_the_chief_writes_it(data_root, tmp_path):
    from amazonmine.core.config import load_config
    from amazonmine.neural.model import load_trained
    from amazonmine.stages.train import run_train

    run_dir = tmp_path / "run"
    sets = split_run(data_root, run_dir, f"train.batch_size={GLOBAL_BATCH // 2}")
    before = {p.relative_to(run_dir) for p in run_dir.rglob("*")}
    workers = Workers(tmp_path, [sets_args(sets, "--fold", "0")] * 2)
    codes = workers.wait()
    assert codes == [0, 0], workers.report()

    # One model, the same on both workers after training (each printed the digest of its weights).
    digests = [DIGEST.findall(workers.output(i)[0]) for i in range(2)]
    assert digests[0] and digests[0] == digests[1], workers.report()
    summary = json.loads((run_dir / "fold0" / "summary.json").read_text())
    assert summary["weights_sha256"].startswith(digests[0][0])
    assert summary["workers"] == 2 and summary["replicas"] == 2
    assert summary["global_batch"] == GLOBAL_BATCH

    # The artifacts exist once, written by the chief; the other worker's private folder is gone.
    made = {p.relative_to(run_dir) for p in run_dir.rglob("*")} - before
    assert {Path("fold0/b01_dense121.h5"), Path("fold0/summary.json"), Path("fold0/history.csv"),
            Path("oof_fold0.csv")} <= made
    assert not (run_dir / "fold0" / "resume").exists()
    assert list(workers.tmpdirs[1].iterdir()) == []
    model = load_trained(run_dir / "fold0" / "b01_dense121.h5")  # safe_mode=True
    assert model.output_shape == (None, 17)
    assert len(pd.read_csv(run_dir / "fold0" / "history.csv")) == 2

    # The same config in one process (the same global batch) learns as much, within the noise of six steps.
    alone_dir = tmp_path / "alone"
    alone = split_run(data_root, alone_dir, f"train.batch_size={GLOBAL_BATCH}")
    (single,) = run_train(load_config(None, alone), folds=[0])
    assert abs(summary["oof_f2_flat"] - single.summary["oof_f2_flat"]) < 0.1, (summary, single.summary)
    assert pd.read_csv(run_dir / "oof_fold0.csv")["image_name"].tolist() == \
        pd.read_csv(alone_dir / "oof_fold0.csv")["image_name"].tolist()


@pytest.mark.slow
def test_a_worker_with_other_settings_or_split_is_named_and_nobody_trains(data_root, tmp_path):
    run_dir = tmp_path / "run"
    sets = split_run(data_root, run_dir, "train.batch_size=8")
    other = sets + ["train.image_size=48"]
    workers = Workers(tmp_path, [sets_args(sets, "--fold", "0"), sets_args(other, "--fold", "0")])
    codes = workers.wait()
    assert codes == [EXIT_ERROR, EXIT_ERROR], workers.report()  # a settings mismatch is an error in the data
    for index in range(2):
        err = workers.output(index)[1].strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: worker 1 (127.0.0.1:"), workers.report()
        assert "train.image_size 32 vs 48" in err[0], workers.report()
    assert not (run_dir / "fold0").exists()

    # Another split on worker 1 (its own run folder, made with another seed) is named as such.
    other_dir = tmp_path / "other"
    split_run(data_root, other_dir, "train.batch_size=8", "run.seed=99")
    mixed = [s for s in sets if not s.startswith("run.dir=")] + [f"run.dir={other_dir}"]
    workers = Workers(tmp_path / "again", [sets_args(sets, "--fold", "0"), sets_args(mixed, "--fold", "0")])
    assert workers.wait() == [EXIT_ERROR, EXIT_ERROR], workers.report()
    assert "split (folds.csv + train_manifest.csv)" in workers.output(0)[1], workers.report()


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_in_bounded_time_and_resume_finishes(data_root, tmp_path):
    run_dir = tmp_path / "run"
    sets = split_run(data_root, run_dir, "train.batch_size=8", "train.epochs=3", "train.steps_per_epoch=40")
    workers = Workers(tmp_path, [sets_args(sets, "--fold", "0")] * 2)
    history = run_dir / "fold0" / "history.csv"
    deadline = time.monotonic() + HUNG
    while time.monotonic() < deadline and workers.procs[0].poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 2:  # header + epoch 1
            break
        time.sleep(0.2)
    else:
        workers.kill()
        pytest.fail(f"epoch 1 never finished:\n{workers.report()}")
    workers.procs[1].send_signal(signal.SIGKILL)  # worker 1 dies in epoch 2
    killed = time.monotonic()
    try:
        code = workers.procs[0].wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        workers.kill()
        pytest.fail(f"the chief did not stop within {STOP_BOUND:.0f} s of worker 1's death:\n{workers.report()}")
    took = time.monotonic() - killed
    out, err = workers.output(0)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_ERROR and len(lines) == 1, workers.report()
    assert lines[0].startswith("error: the chief (127.0.0.1:") and "gave up: worker 1 (127.0.0.1:" in lines[0], err
    assert "--resume" in lines[0]
    print(f"the chief stopped {took:.1f} s after worker 1 was killed")

    # Both start again with --resume: epoch 1 is not trained again, the fold finishes.
    again = Workers(tmp_path / "resume", [sets_args(sets, "--fold", "0", "--resume")] * 2)
    assert again.wait() == [0, 0], again.report()
    finished = pd.read_csv(history)
    assert finished["epoch"].tolist() == [0, 1, 2]
    summary = json.loads((run_dir / "fold0" / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and not (run_dir / "fold0" / "resume").exists()
    digests = [DIGEST.findall(again.output(i)[0]) for i in range(2)]
    assert digests[0] and digests[0] == digests[1], again.report()


STUCK = """
import sys, time
from amazonmine.neural.cluster import join
import tensorflow as tf
cluster = join("auto", step_timeout=3)
with cluster.errors():
    if cluster.index == 1:
        time.sleep(8)  # long local work: the exchanges between steps wait for it
    cluster.barrier()
    print("waited", flush=True)
    if cluster.index == 1:
        time.sleep(30)  # alive, heartbeats going, but not taking part in the step
    cluster.strategy.reduce("SUM", tf.ones(2), axis=None)
"""


@pytest.mark.slow
def test_a_stuck_worker_times_the_step_out(tmp_path):
    # The collective timeout (CommunicationOptions) bounds a worker that is alive but stuck in a training step,
    # which the heartbeats would not notice; the exchanges between steps are not bound by it.
    ports = free_loopback_ports(2)
    procs = []
    for index in range(2):
        env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        env.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})})
        procs.append(subprocess.Popen([sys.executable, "-c", STUCK], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        out, err = procs[0].communicate(timeout=HUNG)
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert procs[0].returncode != 0 and out.strip() == "waited", err[-3000:]
    assert "ClusterError: the chief (127.0.0.1:" in err and "waiting more than 3 s" in err, err[-3000:]


# --- reading the cluster from the environment (no TensorFlow cluster started) -------------------------------

def tf_config(cluster, task) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}


def test_tf_config_names_the_workers_and_the_chief():
    plain = read_membership("auto", tf_config({"worker": ["a:1", "b:2", "c:3"]}, {"type": "worker", "index": 2}))
    assert plain.num_workers == 3 and plain.index == 2 and not plain.is_chief
    assert plain.describe() == "worker 2 (c:3)" and plain.describe(0) == "the chief (a:1)"
    chief = read_membership("auto", tf_config({"chief": ["a:1"], "worker": ["b:2"]}, {"type": "worker", "index": 0}))
    assert chief.addresses == ["a:1", "b:2"] and chief.index == 1 and chief.describe(0) == "the chief (a:1)"
    assert read_membership("auto", {}) is None
    assert read_membership("none", tf_config({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 0})) is None


@pytest.mark.parametrize("environ, message", [
    ({"TF_CONFIG": "{not json"}, "not valid JSON"),
    (tf_config({"worker": ["a:1"], "ps": ["p:1"]}, {"type": "worker", "index": 0}), "ps are for other strategies"),
    (tf_config({"worker": ["a:1", "b:2"]}, {"type": "worker", "index": 2}), "task.index 2"),
    (tf_config({"worker": ["a:1", "a:1"]}, {"type": "worker", "index": 0}), "appears twice"),
    (tf_config({"worker": ["a"]}, {"type": "worker", "index": 0}), "host:port"),
    ({}, "TF_CONFIG is not set"),
])
def test_a_bad_tf_config_is_one_line(environ, message):
    mode = "tf-config" if not environ else "auto"
    with pytest.raises(ClusterError, match=message):
        read_membership(mode, environ)


def test_slurm_job_step_is_read_by_tensorflows_resolver(monkeypatch):
    for name, value in {"SLURM_PROCID": "3", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[1-2]",
                        "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}.items():
        monkeypatch.setenv(name, value)
    membership = read_membership("slurm")
    assert isinstance(membership, Membership) and membership.source == "Slurm"
    assert membership.addresses == ["node1:8888", "node1:8889", "node2:8888", "node2:8889"]
    assert membership.index == 3 and not membership.is_chief
    monkeypatch.delenv("SLURM_PROCID")
    with pytest.raises(ClusterError, match="SLURM_PROCID not set: start the workers as one job step with srun"):
        read_membership("slurm")


@pytest.mark.slow
def test_importing_the_package_leaves_tensorflow_unstarted_for_the_strategy():
    # The strategy must configure TensorFlow's runtime before anything starts it (tensorflow#55178).
    code = ("import amazonmine.cli, amazonmine.stages.train, amazonmine.neural.cluster, amazonmine.neural.model, "
            "amazonmine.neural.datasets, amazonmine.neural.fitting, amazonmine.core.fold_plan, "
            "amazonmine.neural.device\n"
            "from amazonmine.core.config import load_config\nload_config(None, [])\n"
            "import tensorflow as tf\ntf.config.set_visible_devices([], 'GPU')\nprint('unstarted')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.stdout.strip() == "unstarted", out.stderr[-2000:]
