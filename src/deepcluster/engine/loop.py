"""The training engine: one loop for every method.

    targets = method.initial_targets()                  # DeepCluster: cluster the untrained network
    for epoch in epochs:
        seed the epoch; method.before_epoch()            # e.g. a fresh classifier head
        train one pass over method.epoch_order()         # method.loss() on every batch
        targets = method.refresh_targets()               # DeepCluster: extract, PCA, k-means
        log the row, save the checkpoint

The engine alone starts the processes (Lightning Fabric: one process, ``devices=N`` or torchrun),
seeds every epoch (the same epoch whether or not the run was resumed before it), owns the loader,
the optimiser steps and the learning-rate schedule, the collectives around a pass, checkpoints,
the history and resume. Across processes every process takes every world-th image of the same
global order (so one step's local batches together are the batch one process would take), DDP
averages the gradients and rank 0 alone writes files.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from lightning.fabric import Fabric

from ..atomic import atomic_write
from ..checkpoint import save_npy
from ..config import PretrainConfig
from ..distributed import (barrier, broadcast_object, count_nonfinite, end_processes,
                           has_process_group, mean_over_processes)
from ..errors import Diverged
from ..methods import get_method
from ..methods.base import Method, Refresh, RunContext
from ..console import console, progress_bar
from ..precision import resolve_precision
from ..sampler import process_share
from .checkpoints import checkpoint_path, keep_last_distances, load_run_state, save_run_state
from .history import History, history_table, read_metrics_csv
from .online_knn import OnlineKnn
from .loaders import training_loader
from .processes import (broadcast_buffers, local_batch_size, prepare_model, seed_epoch,
                        seed_process_stream, start_processes)
from .resume import NothingToDo, check_resume
from .run_lock import RunLock, RunLocked
from .schedule import learning_rate


@dataclass
class PretrainResult:
    checkpoint: Path
    history: list[dict[str, Any]]
    assignments: np.ndarray | None  # the last cluster ids (None for the supervised baseline)
    rank: int = 0  # this process's rank in the run (its processes have ended on return)


def pretrain(config: PretrainConfig, resume: str | Path | None = None,
             progress: bool = True) -> PretrainResult:
    """Run ``config``'s method; ``resume`` continues the run of that checkpoint (its config must
    equal ``config`` but for the resumable fields: see ``engine.resume``)."""
    state = None
    if resume is not None:
        state, saved = load_run_state(resume)
        try:
            check_resume(saved, config, int(state["epoch"]), resume)
        except NothingToDo as done:
            console.print(str(done))
            return PretrainResult(Path(resume), saved_history(state, config), None)
    callers_group = has_process_group()  # a process group the caller started stays open
    fabric = start_processes(config)
    lock = RunLock(config.out) if fabric.is_global_zero else None
    in_use = broadcast_object(lock.acquire() if lock else None)  # every process stops, or none
    if in_use:
        raise RunLocked(in_use)
    try:
        engine = Engine(config, fabric, get_method(config.method)(config, fabric), progress)
        try:
            result = engine.run(state)
        finally:
            engine.history.close()
            barrier()  # rank 0's files are complete when any process returns
    finally:
        if lock:
            lock.release()
    if not callers_group:
        end_processes()  # only after a clean finish: see end_processes
    return result


def saved_history(state: dict[str, Any], config: PretrainConfig) -> list[dict[str, Any]]:
    """The rows of a checkpoint (or, for one written before rows were kept in it, of its CSV)."""
    if "history" in state:
        return list(state["history"])
    return read_metrics_csv(Path(config.out) / "metrics.csv", int(state["epoch"]))


class Engine:
    """One run: the method's model and data on this process, the loader, optimiser and history."""

    def __init__(self, config: PretrainConfig, fabric: Fabric, method: Method, progress: bool):
        self.config, self.fabric, self.method = config, fabric, method
        self.rank, self.world = fabric.global_rank, fabric.world_size
        self.data = method.training_data()
        self.data.batch_transform.to(fabric.device)
        self.model = prepare_model(method.build_model(), config, fabric)
        self.optimizer = torch.optim.SGD(method.param_groups(self.model), lr=config.lr,
                                         momentum=config.momentum,
                                         weight_decay=config.weight_decay)
        self.out = Path(config.out)
        self.history = History(self.out, [], writer=fabric.is_global_zero, show=progress)
        self.progress = progress
        self.knn = OnlineKnn(config, fabric, method, self.data.labels, progress)

    def run(self, state: dict[str, Any] | None) -> PretrainResult:
        config = self.config
        start_epoch, refresh = 0, None
        if state is not None:
            start_epoch = self.restore(state)
        self.fabric_model, self.optimizer = self.fabric.setup(self.model, self.optimizer)
        self.loader, self.batches, self.on_device = training_loader(
            self.fabric, self.data.images, local_batch_size(config.batch_size, self.world),
            config.workers, self.data.batch_transform, self.data.collate)
        self.write_config()
        run = RunContext(self.fabric, self.model, self.data, self.forward_pass)
        if state is None:
            with self.diverging(-1, "in the clustering of the untrained network"):
                refresh = self.knn.measure(run, 0, self.method.initial_targets)
            if refresh is not None:
                self.log(0, refresh, loss=float("nan"), lr=0.0,
                         train_seconds=refresh.seconds.pop("train_s", 0.0))
        for epoch in range(start_epoch, config.epochs):
            seed_epoch(config.seed, epoch)
            self.method.before_epoch(epoch)
            seed_process_stream(config.seed, epoch, self.rank)
            order = self.method.epoch_order(epoch, self.world)
            start = time.perf_counter()
            loss, lr = self.train_pass(process_share(order, self.rank, self.world), epoch, config.seed + epoch)
            train_seconds = time.perf_counter() - start
            self.method.after_pass(order, self.world)
            if self.world > 1:
                broadcast_buffers(self.model)
            with self.diverging(epoch, "in the clustering after it"):
                refresh = self.knn.measure(
                    run, epoch + 1, lambda run: self.method.refresh_targets(run, epoch + 1))
            self.log(epoch + 1, refresh, loss, lr, train_seconds)
        if self.fabric.is_global_zero and self.progress:
            console.print(history_table(self.history.rows, self.method.title))
        last = refresh.assignments if refresh is not None else None
        return PretrainResult(checkpoint_path(self.out), self.history.rows, last, self.rank)

    def restore(self, state: dict[str, Any]) -> int:
        """The model, optimiser, method state, random stream and history of a checkpoint; returns
        the epochs done."""
        self.model.backbone.load_state_dict(state["backbone"])
        self.method.load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.history.rows = saved_history(state, self.config)
        self.history.rewrite()  # drops any row an interrupted run logged past its checkpoint
        done = int(state["epoch"])
        assignments = state.get("assignments")  # the method's cluster ids, where it has any
        if self.fabric.is_global_zero and assignments is not None:
            file = self.out / "assignments" / f"epoch_{done:03d}.npy"
            if not file.exists():  # interrupted between the checkpoint and its assignments
                ids = assignments if assignments.dim() == 1 else assignments[0]
                save_npy(ids.numpy().astype(np.int32), file)
        return done

    def write_config(self) -> None:
        if self.fabric.is_global_zero:
            atomic_write(self.out / "config.yaml",
                         lambda temp: Path(temp).write_text(self.config.to_yaml()))

    def train_pass(self, order: Sequence[int], epoch: int, seed: int) -> tuple[float, float]:
        """One training pass over this process's ``order``; returns the mean loss over every
        process's samples and the last learning rate."""
        self.batches.set_epoch(order, seed)
        steps = len(self.batches)
        self.fabric_model.train()
        total, count, lr = 0.0, 0, 0.0
        bar = progress_bar(self.loader, f"epoch {epoch + 1}/{self.config.epochs}",
                           enabled=self.fabric.is_global_zero and self.progress)
        for step, (inputs, indices) in enumerate(bar, start=epoch * steps):
            with torch.no_grad():
                inputs = self.on_device(inputs)
            lr = learning_rate(self.config, step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = self.method.loss(self.fabric_model, inputs, indices)
            self.optimizer.zero_grad(set_to_none=True)
            self.fabric.backward(loss)
            self.optimizer.step()
            value = loss.item()
            if count_nonfinite(torch.tensor([value])):
                raise self.diverged(epoch, f"step {step - epoch * steps + 1} of {steps}",
                                    f"the loss is {value}", lr)
            total += value * len(indices)
            count += len(indices)
            bar.set_postfix(loss=f"{total / count:.3f}", refresh=False)
        return mean_over_processes(total, count), lr

    @contextmanager
    def diverging(self, epoch: int, where: str) -> Iterator[None]:
        """The method's own ``Diverged`` (non-finite features), told with the epoch and causes."""
        try:
            yield
        except Diverged as error:
            raise self.diverged(epoch, where, str(error), self.config.lr) from None

    def diverged(self, epoch: int, where: str, what: str, lr: float) -> Diverged:
        """The one-line account of a run that stopped on NaN/inf: where, likely causes, and what
        is kept (the last checkpoint, written before the epoch, is never overwritten)."""
        precision = resolve_precision(self.config.precision, self.config.accelerator)
        causes = f"a learning rate too high (lr={lr:g})"
        if precision != "32-true":
            causes += f" or the {precision} precision (try --precision 32-true)"
        done = self.history.rows[-1]["epoch"] if self.history.rows else None
        kept = ("no checkpoint was written" if done is None else
                f"the last good checkpoint {checkpoint_path(self.out)} (epoch {done}) is kept")
        when = "before the first epoch" if epoch < 0 else f"in epoch {epoch + 1}"
        return Diverged(f"training diverged {when}, {where}: {what}; likely {causes}; {kept}")

    def forward_pass(self, order: Sequence[int], step: Callable) -> float:
        """``step(model, inputs, indices)`` on every batch of this process's share of the global
        ``order``, in train mode without gradients (e.g. DeepCluster-v2's first filling of its
        memory bank); returns the seconds it took."""
        start = time.perf_counter()
        self.batches.set_epoch(process_share(order, self.rank, self.world), self.config.seed)
        self.fabric_model.train()
        bar = progress_bar(self.loader, "first pass",
                           enabled=self.fabric.is_global_zero and self.progress)
        with torch.no_grad():
            for inputs, indices in bar:
                step(self.fabric_model, self.on_device(inputs), indices)
        if self.world > 1:
            broadcast_buffers(self.model)
        return time.perf_counter() - start

    def log(self, epoch: int, refresh: Refresh, loss: float, lr: float,
            train_seconds: float) -> None:
        """The epoch's row, checkpoint and assignments (checkpoint first: a run killed after it
        resumes with this row; one killed before it redoes the epoch)."""
        row = {"epoch": epoch, "loss": loss, **refresh.stats, "lr": lr, **refresh.seconds,
               "train_s": train_seconds}
        rows = self.history.rows + [row]
        if self.fabric.is_global_zero:
            save_run_state(self.config, epoch, self.model.backbone, self.optimizer, rows,
                           self.method.state_dict())
            if refresh.assignments is not None:
                save_npy(refresh.assignments.astype(np.int32),
                         self.out / "assignments" / f"epoch_{epoch:03d}.npy")
                keep_last_distances(self.out / "assignments", epoch, refresh.distances)
        self.history.add(row)

