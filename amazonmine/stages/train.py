"""Train stage: one model per fold of the split, best-by-validation-F2 checkpoint, out-of-fold predictions.

For fold K the training rows come from the split's manifest (every chip outside fold K, plus the rare-label
copies under fixed dihedral views); fold K itself is the validation set, never oversampled. Per fold the run
folder gets (names from :class:`amazonmine.core.runfolder.RunFolder`)::

    fold{K}/b01_dense121.h5     best epoch by validation mean F2 at 0.2 (the Kaggle metric), no optimizer
    fold{K}/history.csv         one row per epoch (loss, f2, val_loss, val_f2, lr)
    fold{K}/tensorboard/        TensorBoard logs
    fold{K}/summary.json        best epoch, val loss, val F2, OOF F2, images/s, wall time (written last)
    fold{K}/resume/             last epoch's weights + optimizer + epoch (deleted when the fold finishes)
    fold{K}/.next/              a retrain in progress, with the same files, moved into fold{K}/ when finished
    oof_fold{K}.csv             image_name + 17 probabilities for fold K's chips (test-time augmented)

Resume (``--resume``) restores weights, optimizer state and epoch from ``resume/`` and the best score so far,
so the best checkpoint is not overwritten by a worse epoch after a restart (the trap of combining Keras'
BackupAndRestore with ModelCheckpoint(save_best_only)). A resume starts at an epoch's end (Ctrl-C or SIGTERM in an
epoch keeps the state of the one before) and continues the same stream of chips (the ``start`` of
:func:`amazonmine.neural.datasets.make_dataset`) with dropout's random state restored: it ends with the weights
of the uninterrupted run.

A fold that is trained again (``--retrain``, or a new split) is trained in ``fold{K}/.next/`` with files of its
own and swapped in only when finished, so a refused, failed or interrupted retrain leaves the fold as it was
(:mod:`amazonmine.core.fold_plan` has the swap). Everything that can refuse a fold (the model, ``train.init_from``,
the resume state) is checked before the fold's folder is written. The run folder is locked for the whole run.

This module is the fold loop; the rest of training lives by concern:

* :mod:`amazonmine.neural.trainer` -- one fold: the Keras fit, its interrupt handling, the fold's finish;
* :mod:`amazonmine.core.fold_plan` -- skip / resume / retrain, the resume state, settings, a fold's rows;
* :mod:`amazonmine.neural.fitting` -- metric, loss, optimizer, callbacks, BatchNorm recalibration;
* :mod:`amazonmine.neural.device` -- CPU or GPUs, precision, distribution strategy.
* :mod:`amazonmine.neural.cluster` -- training across machines (MultiWorkerMirroredStrategy): the same fold loop on
  every worker, each reading its share of the manifest, the chief alone writing the run folder.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable

from amazonmine.core.errors import AmazonmineError
from amazonmine.core.fold_plan import FoldAction, finish_retrain, fold_action, resolve_folds
from amazonmine.core.runfolder import RunFolder
from amazonmine.neural.device import set_op_determinism, setup_device
from amazonmine.neural.trainer import TrainResult, train_fold

if TYPE_CHECKING:
    from amazonmine.neural.cluster import Cluster

__all__ = ["CLUSTER_RESUME", "TrainResult", "run_train"]

# What a worker that lost the cluster is told to do.
CLUSTER_RESUME = ("once every worker can run again, start the same command with --resume on each of them: "
                  "training continues from the last finished epoch")


# --- the stage ---------------------------------------------------------------------------------------------

def run_train(cfg, folds: list[int] | None = None, gpu: bool = False, resume: bool = False,
              retrain: bool = False, on_fold: Callable[[TrainResult], None] | None = None,
              cluster: Cluster | None = None) -> list[TrainResult]:
    """Train each requested fold in turn; ``on_fold(result)`` is called as each one finishes.

    A fold already trained on the current split is kept (its result says skipped) unless ``retrain``; one
    with an interrupted run saved needs ``resume`` (continue) or ``retrain`` (start over).

    With a ``cluster`` (:func:`amazonmine.neural.cluster.join`, called before anything else touched TensorFlow) every
    worker runs this with the same arguments: they must agree on what they train, the chief decides what each
    fold needs and is the only one to write the run folder.
    """
    if resume and retrain:
        raise AmazonmineError("--resume and --retrain exclude each other: continue a fold, or start it over")
    if cfg.train.xla and cfg.train.deterministic and not gpu and cluster is None:
        # Keras would only warn and train without XLA: TensorFlow's op determinism (train.deterministic, on
        # the CPU) turns jit_compile off.
        raise AmazonmineError("train.xla: true has no effect while train.deterministic is true on the CPU (op "
                              "determinism turns XLA off): set train.deterministic=false for XLA, or train.xla=false")
    if cfg.train.validation_bn_batches and cfg.train.ema > 0:
        raise AmazonmineError("train.validation_bn_batches applies without train.ema only: averaged weights are "
                              "recalibrated before each validation already (on up to 25 of train.bn_recalibration_"
                              "batches); set one of them to 0")
    if cfg.train.validation_bn_batches and cluster is not None:
        raise AmazonmineError("train.validation_bn_batches works on one process only (across workers the statistics "
                              "would have to be gathered in step): set it to 0 for multi-worker training")
    if cfg.train.head_epochs and cluster is not None:
        raise AmazonmineError("train.head_epochs works on one process only (the head phase is not run in step "
                              "across workers): set it to 0 for multi-worker training")
    chosen = folds if folds is not None else resolve_folds(cfg)
    if cluster is None:
        return _train_folds(cfg, chosen, gpu, resume, retrain, on_fold, None)
    from amazonmine.neural.cluster import training_facts

    with cluster.errors(CLUSTER_RESUME):
        facts = cluster.settle(lambda: training_facts(cfg, chosen, resume=resume, retrain=retrain, gpu=gpu,
                                                      local_replicas=cluster.local_replicas))
        cluster.require_same(facts)
        results = _train_folds(cfg, chosen, gpu, resume, retrain, on_fold, cluster)
        cluster.barrier()  # no worker leaves while the chief still writes the last fold
    return results


def _train_folds(cfg, chosen: list[int], gpu: bool, resume: bool, retrain: bool, on_fold,
                 cluster: Cluster | None) -> list[TrainResult]:
    run = RunFolder.from_config(cfg)
    lead = cluster is None or cluster.is_chief  # the one process that writes the run folder
    if lead and not run.root.exists():
        run.split_fingerprint()  # no run folder, so no split: refused before the lock would make the folder
    # The lock comes before the folds are judged: a run in progress looks like an interrupted one, and a
    # second train must hear that the run is busy, not be told to --resume it.
    with run.lock("train") if lead else contextlib.nullcontext():

        def fold_actions() -> dict[int, FoldAction]:
            for fold in chosen:  # a retrain killed while being swapped in is finished before anything is decided
                finish_retrain(run.fold(fold))
            actions = {fold: fold_action(cfg, fold, resume, retrain) for fold in chosen}  # refusals before writes
            if any(a.kind == "train" for a in actions.values()):
                _check_init_from_path(cfg, chosen[0])  # a typo or a mismatch heard now, not after the preflight
            return actions

        if cluster is None:
            actions = fold_actions()
            strategy = setup_device(gpu)
            if cfg.train.validation_bn_batches and strategy.num_replicas_in_sync > 1:
                replicas = strategy.num_replicas_in_sync
                raise AmazonmineError(f"train.validation_bn_batches works on one device only ({replicas} replicas "
                                      f"here: the statistics would have to be gathered in step): set it to 0, or "
                                      f"train on one GPU")
        else:
            # The run folder's state (finished, interrupted, resume epochs) is the chief's: the other workers
            # follow it, whether or not they see the same folder.
            decided = cluster.settle(fold_actions, chief_only=True)
            shared = cluster.from_chief({str(k): list(a) for k, a in decided.items()} if decided else None)
            actions = {int(k): FoldAction(*a) for k, a in shared.items()}
            strategy = cluster.strategy
        set_op_determinism(not gpu and cfg.train.deterministic)  # train.deterministic holds on the CPU
        if lead:
            run.prepare(cfg)
        results = []
        with _terminate_as_interrupt():
            for fold in chosen:
                result = train_fold(cfg, fold, strategy, gpu=gpu, action=actions[fold].kind,
                                    note=actions[fold].note, cluster=cluster)
                results.append(result)
                if on_fold is not None:
                    on_fold(result)
    return results


def _check_init_from_path(cfg, fold: int) -> None:
    """A train.init_from that names nothing, or a source of another input size or backbone, refused before any
    chip is read (bands and layers are checked when the source is loaded)."""
    if cfg.train.init_from:
        from amazonmine.neural.finetune import check_compatible, resolve_source

        check_compatible(resolve_source(cfg.train.init_from, fold), cfg.train)



# --- signals -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a batch scheduler's or `kill`'s stop) saves the resume state like Ctrl-C does.

    Also re-enables SIGINT for a run started in the background by a shell, which sets it to 'ignore'.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
