"""Training across machines on TensorFlow's own engine: ``tf.distribute.MultiWorkerMirroredStrategy``.

Every worker runs the same ``amazonmine train`` command. Who the workers are comes from the standard
``TF_CONFIG`` variable (one per machine, naming every worker and this one's index) or, with ``--cluster slurm``,
from the Slurm job step (``SlurmClusterResolver``). TensorFlow then keeps one copy of the model per worker and
sums the gradients of every step over all of them (collective all-reduce), so every worker holds the same
weights after every step. What this module adds around that engine, in the order a run meets it:

* :func:`join` -- creates the strategy at program start, before any other TensorFlow call (TensorFlow refuses
  later: "Collective ops must be configured at program startup", tensorflow#55178), with the devices of
  ``--gpu`` (mixed precision, every local GPU) or the CPU. Before that it checks what TensorFlow would only
  stumble on: this worker's port must be free (it is held from then on), and every other worker must answer
  on its port within ``--cluster-timeout``. TensorFlow's strategy creation waits for the others inside C++,
  holding the interpreter, for up to an hour, and takes SIGTERM for its own preemption notice: a worker whose
  peer never starts would hang there, deaf to Ctrl-C and SIGTERM. The wait is therefore done here, in Python,
  where it says what it waits for, ends in one line at the timeout, and stops on Ctrl-C or SIGTERM; and the
  creation itself, which then takes seconds, is watched by a small process that ends it (one line) if the
  cluster still has not formed after the timeout, or on a Ctrl-C or SIGTERM sent to the process group.
* :meth:`Cluster.require_same` -- every worker must train the same thing: the split, the settings a model
  depends on, the folds, the flags and the versions are exchanged, and a worker that differs is named with the
  difference; every worker then stops with the same line.
* :meth:`Cluster.settle` and :meth:`Cluster.from_chief` -- a refusal on one worker (a bad chip, a fold that
  must not be retrained) stops all of them with its message, and what depends on the run folder's state (which
  folds to skip or resume, the resume state itself) is decided by the chief and followed by the others, so a
  run folder need not be shared between machines.
* :meth:`Cluster.distribute` -- each worker reads only its own share of the training manifest; a step trains
  on per-worker batch x workers chips (the global batch).
* :meth:`Cluster.writable` -- only the chief writes into the run folder. The other workers save exactly what
  the chief saves (saving can take part in collectives, so TensorFlow asks every worker to save), into a
  private temporary folder that is deleted when they finish.
* :meth:`Cluster.same_statistics` -- Keras 3 moves each worker's BatchNorm statistics with its own batches;
  they are averaged over the workers before each validation, so every worker validates and saves one model.
* :meth:`Cluster.errors` -- a worker that dies stops the others with one line instead of a hang
  (tensorflow#35878): TensorFlow's coordination service notices a peer that stops sending heartbeats, a closed
  connection fails the pending collective at once, and every training collective carries a timeout
  (``CommunicationOptions(timeout_seconds=...)``) for a peer that is alive but no longer takes part.

Keras 3's ``model.fit`` under this strategy trips over two reductions in its TensorFlow trainer
(keras-team/keras#20585): the batch it builds the model from, and the per-step logs. :meth:`Cluster.prepare_model`
and :func:`_mend_keras_for_workers` replace them with reductions the strategy supports, only in a process that
belongs to a cluster.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from amazonmine.core.errors import AmazonmineError, shorten

CLUSTER_MODES = ("auto", "tf-config", "slurm", "none")
# A training step that waits this long for the other workers gives up (they are alive but stuck); dead or
# unreachable workers are noticed sooner, by TensorFlow's heartbeats.
DEFAULT_STEP_TIMEOUT = 600.0
# The first port of a Slurm node's workers (SlurmClusterResolver's own default).
SLURM_PORT_BASE = 8888
_JOBS = ("chief", "worker")
_TASK = re.compile(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)")
# How often a waiting worker tries the ports of those not yet answering, and how long one try may take.
_PEER_POLL_SECONDS = 0.25
_PEER_CONNECT_SECONDS = 1.0


class ClusterError(AmazonmineError):
    """The cluster could not be joined, disagrees, or lost a worker."""


# --- who the workers are (no TensorFlow) -------------------------------------------------------------------

@dataclass(frozen=True)
class Membership:
    """The cluster as the environment describes it: every worker's address in TensorFlow's order (the chief
    first), and this process's task."""

    source: str                 # "TF_CONFIG" or "Slurm"
    jobs: Mapping[str, tuple]   # job name -> addresses ("chief" and/or "worker")
    task_type: str
    task_index: int

    @property
    def addresses(self) -> list[str]:
        return [a for job in _JOBS for a in self.jobs.get(job, ())]

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def index(self) -> int:
        """Position in the cluster, the chief being 0 (TensorFlow's id_in_cluster and input pipeline id)."""
        return self.ordinal(self.task_type, self.task_index)

    def ordinal(self, task_type: str, task_index: int) -> int:
        before = len(self.jobs.get("chief", ())) if task_type == "worker" else 0
        return before + task_index

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def describe(self, index: int | None = None) -> str:
        index = self.index if index is None else index
        role = "the chief" if index == 0 else f"worker {index}"
        return f"{role} ({self.addresses[index]})"


def read_membership(mode: str = "auto", environ: Mapping[str, str] | None = None) -> Membership | None:
    """The cluster this process belongs to, or None for a single process.

    ``auto`` joins when ``TF_CONFIG`` is set; ``tf-config`` requires it; ``slurm`` reads the Slurm job step;
    ``none`` ignores both.
    """
    environ = os.environ if environ is None else environ
    if mode not in CLUSTER_MODES:
        raise ClusterError(f"--cluster {mode}: choose one of {', '.join(CLUSTER_MODES)}")
    if mode == "none":
        return None
    if mode == "slurm":
        return _slurm_membership(environ)
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        if mode == "tf-config":
            raise ClusterError("--cluster tf-config: TF_CONFIG is not set (see 'Training on several machines' "
                               "in the README)")
        return None
    return _tf_config_membership(raw)


def _tf_config_membership(raw: str) -> Membership:
    try:
        config = json.loads(raw)
    except ValueError as exc:
        raise ClusterError(f"TF_CONFIG is not valid JSON ({exc})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ClusterError('TF_CONFIG needs "cluster" and "task": {"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": 0}}')
    other = sorted(set(cluster) - set(_JOBS))
    if other:
        raise ClusterError(f"TF_CONFIG: job(s) {', '.join(other)} are for other strategies; amazonmine trains "
                           f"with MultiWorkerMirroredStrategy, whose jobs are 'worker' (and optionally one 'chief')")
    jobs = {}
    for job in _JOBS:
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ClusterError(f'TF_CONFIG: cluster.{job} must be a list of "host:port" strings')
        for position, address in enumerate(addresses):
            if split_address(address) is None:
                raise ClusterError(f"TF_CONFIG: cluster.{job}[{position}] {shorten(repr(address))} is not a host:port "
                                   f"address (a host name or IP, a colon, a port from 1 to 65535)")
        if addresses:
            jobs[job] = tuple(addresses)
    if len(jobs.get("chief", ())) > 1:
        raise ClusterError("TF_CONFIG: at most one chief")
    if not jobs:
        raise ClusterError("TF_CONFIG: cluster.worker lists no worker")
    task_type, index = task.get("type"), task.get("index")
    if task_type not in jobs:
        raise ClusterError(f"TF_CONFIG: task.type {task_type!r} is not a job of the cluster ({', '.join(jobs)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(jobs[task_type]):
        raise ClusterError(f"TF_CONFIG: task.index {index!r} is not one of the cluster's {task_type} "
                           f"(0..{len(jobs[task_type]) - 1})")
    addresses = [a for job in _JOBS for a in jobs.get(job, ())]
    if len(set(addresses)) != len(addresses):
        raise ClusterError("TF_CONFIG: a host:port appears twice in the cluster")
    return Membership("TF_CONFIG", jobs, task_type, index)


def split_address(address: str) -> tuple[str, int] | None:
    """("host", port) of a "host:port" address ("[::1]:port" for IPv6), or None when it is not one."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or any(c.isspace() or c in "/[]" for c in host) or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _tasks_per_node(spec: str) -> list[int]:
    """Slurm's compressed task counts, e.g. '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ClusterError(f"SLURM_STEP_TASKS_PER_NODE {spec!r}: not a Slurm task list")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _slurm_membership(environ: Mapping[str, str]) -> Membership:
    needed = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")
    missing = [name for name in needed if not environ.get(name)]
    if missing:
        raise ClusterError(f"--cluster slurm: {', '.join(missing)} not set: start the workers as one job step "
                           f"with srun (one task per worker)")
    from amazonmine.neural.tfquiet import import_tensorflow

    tf = import_tensorflow()
    per_node = max(_tasks_per_node(environ["SLURM_STEP_TASKS_PER_NODE"]))
    try:
        # GPUs are assigned later, from --gpu; here the resolver only lays out hosts, ports and ranks (it
        # counts GPUs to spread them and cannot lay out a node that has none).
        resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=SLURM_PORT_BASE, gpus_per_node=per_node, gpus_per_task=1, auto_set_gpu=False)
        spec = resolver.cluster_spec().as_dict()
    except (RuntimeError, ValueError) as exc:
        raise ClusterError(f"--cluster slurm: {exc}") from None
    jobs = {job: tuple(spec[job]) for job in _JOBS if spec.get(job)}
    return Membership("Slurm", jobs, resolver.task_type, int(resolver.task_id))


# --- joining -----------------------------------------------------------------------------------------------

def join(mode: str = "auto", gpu: bool = False, step_timeout: float = DEFAULT_STEP_TIMEOUT,
         join_timeout: float = DEFAULT_STEP_TIMEOUT, say: Callable[[str], None] | None = None) -> "Cluster | None":
    """Join the cluster the environment describes, or return None for a single process.

    Must run before anything else touches TensorFlow in this process: the strategy configures the runtime.
    With one worker in the cluster there is nothing to distribute and None is returned as well.

    ``join_timeout`` bounds the wait for the other workers (0: no limit): their ports must answer within it
    (``say`` is told once what this worker waits for), and TensorFlow must then form the cluster within it
    again; otherwise one line says which worker did not come. Ctrl-C and SIGTERM end the wait.
    """
    membership = read_membership(mode)
    if membership is None or membership.num_workers == 1:
        return None
    for name, value in (("--cluster-timeout", step_timeout), ("the join timeout", join_timeout)):
        if value < 0:
            raise ClusterError(f"{name} must be 0 (wait for ever) or a number of seconds")
    # Before any work: a port held by another program (or by a worker started twice with one task index) is
    # said now, not by a gRPC traceback after TensorFlow has started. Held from here on, it stays this worker's.
    port = _reserve_port(membership)
    try:
        from amazonmine.neural.device import configure_devices
        from amazonmine.neural.tfquiet import import_tensorflow

        tf = import_tensorflow()
        if membership.source == "Slurm" and gpu:
            # Slurm's resolver gives each task its own GPUs through CUDA_VISIBLE_DEVICES, which CUDA reads once:
            # before the devices are configured.
            tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=SLURM_PORT_BASE).cluster_spec()
        gpus = configure_devices(gpu)
        # The cluster as read above, with this worker's device count said outright: the strategy then need not
        # probe the devices itself (TFConfigClusterResolver's way), which would start CUDA on a CPU-only run.
        spec = tf.train.ClusterSpec({job: list(addresses) for job, addresses in membership.jobs.items()})
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            spec, task_type=membership.task_type, task_id=membership.task_index, num_accelerators={"GPU": gpus},
            rpc_layer="grpc")
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=float(step_timeout) or None)
        # Answered only now that this worker is ready to create its strategy at once: a worker that saw every
        # other one answer creates its own, and waits in it (bounded below) only for those still on their way.
        _listen(port, membership)
        with _terminate_as_interrupt():
            wait_for_peers(membership, float(join_timeout), say)
    finally:
        port.close()  # handed to TensorFlow's server, which binds it next
    strategy = _create_strategy(tf, membership, resolver, options, float(join_timeout))
    _mend_keras_for_workers()
    return Cluster(strategy, membership, local_replicas=max(1, gpus), step_timeout=float(step_timeout))


def _reserve_port(membership: Membership) -> socket.socket:
    """A socket bound to this worker's port on every interface, as TensorFlow's server binds it; refused in one
    line when something else holds the port."""
    port = split_address(membership.addresses[membership.index])[1]
    held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As gRPC does: a port whose last connections are still closing (TIME_WAIT, a worker restarted at once) is
    # free for a listener; one another program listens on is not.
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        held.bind(("", port))
    except OSError as exc:
        held.close()
        raise ClusterError(_port_taken(membership, port, exc)) from None
    return held


def _listen(held: socket.socket, membership: Membership) -> None:
    try:
        held.listen(64)  # the others' tries only connect and close: nobody need accept them
    except OSError as exc:  # two sockets may share a port until one listens: the other worker listened first
        raise ClusterError(_port_taken(membership, held.getsockname()[1], exc)) from None


def _port_taken(membership: Membership, port: int, exc: OSError) -> str:
    return (f"cannot join the cluster as {membership.describe()}: port {port} is in use on this machine "
            f"({exc.strerror or exc}: another program holds it, or a worker was started twice with the same task "
            f"index); give each worker a free port in TF_CONFIG")


def wait_for_peers(membership: Membership, timeout: float, say: Callable[[str], None] | None = None,
                   poll: float = _PEER_POLL_SECONDS) -> None:
    """Return once every other worker's port answers; a ClusterError naming those that did not after
    ``timeout`` seconds (0: wait for ever). ``say`` is told once, when some are not up yet, what this worker
    waits for. Interruptible: Ctrl-C (and SIGTERM, as the caller arranges) ends it between two tries."""
    waiting = {index: "no answer yet" for index in range(membership.num_workers) if index != membership.index}
    deadline = time.monotonic() + timeout if timeout else None
    told = False
    while True:
        for index in list(waiting):
            host, port = split_address(membership.addresses[index])
            try:
                with socket.create_connection((host, port), timeout=_PEER_CONNECT_SECONDS):
                    pass
                del waiting[index]
            except OSError as exc:
                waiting[index] = exc.strerror or str(exc) or type(exc).__name__
        if not waiting:
            return
        names = ", ".join(membership.describe(i) for i in waiting)
        if deadline is not None and time.monotonic() >= deadline:
            reasons = "; ".join(sorted(set(waiting.values())))
            raise ClusterError(f"cannot join the cluster as {membership.describe()}: {names} did not answer within "
                               f"{timeout:g} s ({shorten(reasons)}); start every worker with the same command and "
                               f"its own TF_CONFIG task, or raise --cluster-timeout")
        if not told and say is not None:
            limit = f"up to {timeout:g} s" if timeout else "with no time limit"
            say(f"{membership.describe()}: waiting for {names} to start ({limit}, --cluster-timeout)")
            told = True
        time.sleep(poll)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM ends the wait for the other workers as Ctrl-C does (KeyboardInterrupt), in the main thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# The watchdog of the strategy's creation: a separate process, since the creation holds this one's interpreter
# (no Python runs in it, no signal handler, until it returns). It ends quietly when its stdin closes (the
# strategy is made, or this process died); after the timeout, or on a Ctrl-C or SIGTERM sent to the process
# group, it writes one line and kills this process, which nothing else could stop then.
_WATCHDOG = """
import os, select, signal, sys
parent, seconds, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def stop(text):
    os.write(2, (text + "\\n").encode())
    try:
        os.kill(parent, signal.SIGKILL)
    except OSError:
        pass
    os._exit(0)
signal.signal(signal.SIGINT, lambda *_: stop("interrupted"))
signal.signal(signal.SIGTERM, lambda *_: stop("interrupted"))
if not select.select([0], [], [], seconds or None)[0]:
    stop(line)
"""


def _create_strategy(tf, membership: Membership, resolver, options, timeout: float):
    """TensorFlow's MultiWorkerMirroredStrategy, made under the watchdog; TensorFlow's own SIGTERM handler
    (a preemption notice that stops nothing) is replaced by the one this process had."""
    import signal
    import subprocess

    line = (f"error: cannot join the cluster as {membership.describe()}: the workers answered but TensorFlow did "
            f"not form the cluster within {timeout:g} s (a worker stopped since, or another program answers on a "
            f"worker's port)")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), line],
                                stdin=subprocess.PIPE)
    on_terminate = signal.getsignal(signal.SIGTERM)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                            communication_options=options)
    except (RuntimeError, ValueError, tf.errors.OpError) as exc:
        raise ClusterError(f"cannot join the cluster as {membership.describe()}: {_first_line(exc)}") from None
    finally:
        watchdog.stdin.close()
        watchdog.wait()
        if on_terminate is not None:
            signal.signal(signal.SIGTERM, on_terminate)
    return strategy


class Cluster:
    """This process's place in a multi-worker cluster, and the few exchanges training needs between workers."""

    def __init__(self, strategy, membership: Membership, local_replicas: int = 1, step_timeout: float = 0.0):
        self.strategy = strategy
        self.membership = membership
        self.local_replicas = local_replicas
        self.step_timeout = step_timeout
        self._scratch: tempfile.TemporaryDirectory | None = None

    @property
    def num_workers(self) -> int:
        return self.membership.num_workers

    @property
    def index(self) -> int:
        return self.membership.index

    @property
    def is_chief(self) -> bool:
        return self.membership.is_chief

    @property
    def name(self) -> str:
        return self.membership.describe()

    def close(self) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    # --- exchanging values between workers -----------------------------------------------------------------
    def _sum(self, array: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``array`` over the workers (each worker counted once)."""
        import tensorflow as tf

        local = tf.constant(array)
        zeros = tf.zeros_like(local)
        replicas = self.local_replicas

        def value(ctx):
            # Only the first replica of each worker contributes, however many GPUs the worker has.
            return local if ctx.replica_id_in_sync_group % replicas == 0 else zeros

        per_replica = self.strategy.experimental_distribute_values_from_function(value)
        # No timeout: a worker may still be busy with long local work (checking chips, out-of-fold predictions);
        # one that died is noticed by the heartbeats.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=0)
        total = self.strategy.extended.reduce_to(tf.distribute.ReduceOp.SUM, per_replica,
                                                 destinations=per_replica, options=options)
        return self.strategy.experimental_local_results(total)[0].numpy()

    def exchange(self, payload) -> list:
        """Every worker's ``payload`` (anything JSON can hold), in worker order; every worker gets the list."""
        data = np.frombuffer(json.dumps(payload, sort_keys=True).encode("utf-8"), dtype=np.uint8)
        lengths = np.zeros(self.num_workers, np.int64)
        lengths[self.index] = len(data)
        lengths = self._sum(lengths)
        table = np.zeros((self.num_workers, int(lengths.max())), np.int32)
        table[self.index, :len(data)] = data
        table = self._sum(table)
        return [json.loads(bytes(row[:n].astype(np.uint8)).decode("utf-8")) for row, n in zip(table, lengths)]

    def barrier(self) -> None:
        """Wait until every worker is here."""
        self.exchange(None)

    def from_chief(self, value):
        """The chief's ``value`` (JSON-able), on every worker."""
        return self.exchange(value if self.is_chief else None)[0]

    def settle(self, fn: Callable, chief_only: bool = False):
        """Run ``fn`` (on every worker, or the chief only) and return its result; when it refuses on any worker,
        every worker raises that refusal, so no worker is left waiting for one that stopped."""
        error = None
        result = None
        try:
            if self.is_chief or not chief_only:
                result = fn()
        except (AmazonmineError, OSError) as exc:
            error = f"{exc.filename}: {exc.strerror or exc}" if getattr(exc, "filename", None) else str(exc)
            failure = exc
        errors = self.exchange(error)
        for index, message in enumerate(errors):
            if message:
                if index == self.index:
                    raise failure
                raise ClusterError(f"{self.membership.describe(index)} stopped: {message}")
        return result

    def require_same(self, facts: Mapping[str, object]) -> None:
        """Refuse to train unless every worker reports the same ``facts`` (name -> JSON-able value); the first
        worker that differs from the chief is named with its differences."""
        reports = self.exchange(dict(facts))
        chief = reports[0]
        for index, report in enumerate(reports[1:], start=1):
            differ = [f"{key} {_brief(chief.get(key))} vs {_brief(report.get(key))}"
                      for key in sorted(set(chief) | set(report)) if chief.get(key) != report.get(key)]
            if differ:
                more = f"; and {len(differ) - 4} more" if len(differ) > 4 else ""
                raise ClusterError(f"{self.membership.describe(index)} is not running the chief's training "
                                   f"(chief vs worker: {'; '.join(differ[:4])}{more}): every worker must run the "
                                   f"same command on the same split, settings and versions")

    def broadcast(self, variables) -> None:
        """Give every worker the chief's values of ``variables`` (a model's weights, its optimizer's state), e.g.
        after the chief alone loaded a resume state or initial weights from its own disk."""
        self._combine(variables, lambda values: values if self.is_chief else np.zeros_like(values), 1)

    def average(self, variables) -> None:
        """Give every worker the mean over the workers of ``variables`` (floating point)."""
        self._combine(variables, lambda values: values, self.num_workers)

    def _combine(self, variables, contribution: Callable, divisor: int) -> None:
        by_dtype: dict[str, list] = {}
        for variable in variables:
            by_dtype.setdefault(np.dtype(variable.dtype).name, []).append(variable)
        for dtype, group in by_dtype.items():
            sizes = [int(np.prod(v.shape)) for v in group]
            flat = np.concatenate([np.asarray(v.numpy()).reshape(-1) for v in group]).astype(dtype)
            flat = self._sum(contribution(flat))
            if divisor != 1:
                flat = (flat / divisor).astype(dtype)
            start = 0
            for variable, size in zip(group, sizes):
                variable.assign(flat[start:start + size].reshape(variable.shape))
                start += size

    def same_statistics(self):
        """A callback that gives every worker the same BatchNorm statistics before each validation.

        Keras moves each worker's statistics towards its own batches' during an epoch. The update is linear and
        every worker starts the epoch from the same values, so their mean is the moving average of the global
        batches' means (one process with the whole batch would hold the same), and of the workers' own batch
        variances (as Keras on several GPUs has it). Validation, the checkpoints and the resume state then see
        one model on every worker.
        """
        import keras

        cluster = self

        class SameStatistics(keras.callbacks.Callback):
            def on_test_begin(self, logs=None):
                cluster.average([v for v in self.model.non_trainable_weights
                                 if np.issubdtype(np.dtype(v.dtype), np.floating)])

        return SameStatistics()

    # --- input ---------------------------------------------------------------------------------------------
    def distribute(self, make_dataset: Callable, global_batch: int):
        """A training input where each worker reads only its own share: ``make_dataset(shard, shards, batch)``
        returns this worker's shard of the rows, batched per replica, endless (so every worker takes the same
        number of steps per epoch)."""
        if global_batch % (self.num_workers * self.local_replicas):
            raise ClusterError(f"global batch {global_batch} does not split evenly over "
                               f"{self.num_workers * self.local_replicas} replicas")

        def dataset_fn(context):
            if context.input_pipeline_id != self.index or context.num_input_pipelines != self.num_workers:
                raise ClusterError(f"TensorFlow sees this worker as input pipeline {context.input_pipeline_id} "
                                   f"of {context.num_input_pipelines}, amazonmine as {self.index} of "
                                   f"{self.num_workers}")
            return make_dataset(self.index, self.num_workers, context.get_per_replica_batch_size(global_batch))

        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def evaluation_input(self, dataset):
        """Validation input: TensorFlow splits each batch over the workers (``AutoShardPolicy.DATA``). Each
        worker's pipeline runs over the whole set and keeps its own part, which keeps the metrics exact when
        the set does not split evenly."""
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return dataset.with_options(options)

    # --- output --------------------------------------------------------------------------------------------
    def writable(self, run):
        """The run folder this worker writes: the run's own for the chief; for the others, a private temporary
        copy of its layout (deleted by :meth:`close`), so they save what the chief saves without touching the
        run."""
        if self.is_chief:
            return run
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix=f"amazonmine-worker{self.index}-")
        return dataclasses.replace(run, root=Path(self._scratch.name))

    def prepare_model(self, model) -> None:
        """Let ``model.fit`` and ``model.evaluate`` build the model from a batch spread over the workers."""
        import functools

        model._maybe_symbolic_build = functools.partial(_symbolic_build_from_local_batch, model, self.strategy)

    # --- failures ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def errors(self, advice: str = ""):
        """Turn TensorFlow's errors about a lost or stuck worker into one line naming it."""
        import tensorflow as tf

        lost = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                tf.errors.CancelledError)
        try:
            yield
        except tf.errors.OpError as exc:
            text = str(exc.message if hasattr(exc, "message") else exc)
            if not isinstance(exc, lost) and "ollective" not in text:
                raise
            raise ClusterError(self.describe_failure(text) + (f"; {advice}" if advice else "")) from None

    def describe_failure(self, text: str) -> str:
        """One line from TensorFlow's account of a failed collective: which worker, and what it did."""
        who = None
        for job, task in _TASK.findall(text):
            if job in _JOBS and int(task) < len(self.membership.jobs.get(job, ())):
                index = self.membership.ordinal(job, int(task))
                if index != self.index:
                    who = self.membership.describe(index)
                    break
        lowered = text.lower()
        if who is None:
            # A worker that lost the chief hears it from its own heartbeat RPC, which names no task.
            who = "the chief" if "heartbeat" in lowered and not self.is_chief else "another worker"
        if "heartbeat" in lowered:
            what = "stopped sending heartbeats"
        elif "reset by peer" in text or "connection refused" in lowered or "socket closed" in lowered:
            what = "closed its connection"
        elif "timed out" in lowered or "deadline" in lowered:
            what = f"kept a training step waiting more than {self.step_timeout:g} s"
        else:
            what = f"failed ({_first_line(text)})"
        return f"{self.name} gave up: {who} {what}"


def weights_digest(model) -> str:
    """SHA-256 of a model's weights in order: equal on two workers exactly when they hold the same model."""
    digest = hashlib.sha256()
    for array in model.get_weights():
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _first_line(value) -> str:
    text = str(value).strip()
    return text.splitlines()[0][:200] if text else type(value).__name__


def _brief(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 40 else f"{text[:16]}...(sha256 {hashlib.sha256(text.encode()).hexdigest()[:8]})"


# --- Keras under MultiWorkerMirroredStrategy ---------------------------------------------------------------

def _symbolic_build_from_local_batch(model, strategy, iterator=None, data_batch=None):
    """Keras builds a model from one batch before training; under this strategy it first averages that batch
    over the workers, a reduction the strategy cannot do on a tuple. This worker's own part of the batch has
    the shapes and dtypes the build needs."""
    import tensorflow as tf

    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, next(batches))
            break
    with strategy.scope():
        model._symbolic_build(data_batch=data_batch)


def _mend_keras_for_workers() -> None:
    """Keras averages each step's logs over the replicas along axis 0, which a scalar log does not have when
    the replicas span workers; averaged as scalars, they are the same numbers. Done once per process."""
    try:
        from keras.src.backend.tensorflow import trainer
    except ImportError:  # another Keras layout: nothing of this applies
        return
    original = getattr(trainer, "reduce_per_replica", None)
    if original is None or getattr(original, "_amazonmine", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            import tensorflow as tf

            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._amazonmine = True
    trainer.reduce_per_replica = reduce_per_replica


# --- what every worker must agree on -----------------------------------------------------------------------

def training_facts(cfg, folds, *, resume: bool, retrain: bool, gpu: bool, local_replicas: int) -> dict:
    """What a worker trains, as comparable values: two workers that report the same facts train the same
    models on the same chips in the same way."""
    from importlib.metadata import PackageNotFoundError, version

    from amazonmine import __version__
    from amazonmine.core.data import PlanetLayout
    from amazonmine.core.fold_plan import model_settings
    from amazonmine.core.runfolder import RunFolder

    def package(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "absent"

    labels = PlanetLayout.from_config(cfg.data).labels_csv
    facts = {
        "split (folds.csv + train_manifest.csv)": RunFolder.from_config(cfg).split_fingerprint(),
        "labels file": _file_digest(labels),
        "folds": [int(f) for f in folds],
        "flags": {"resume": bool(resume), "retrain": bool(retrain), "gpu": bool(gpu)},
        "replicas per worker": int(local_replicas),
        "run.seed": cfg.run.seed,
        "predict.tta": cfg.predict.tta,
        "predict.batch_size": cfg.predict.batch_size,
        "versions": {"amazonmine": __version__, "tensorflow": package("tensorflow"), "keras": package("keras")},
    }
    facts.update(model_settings(cfg))
    return facts


def _file_digest(path: Path) -> str:
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


