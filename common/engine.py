"""The one training loop of the collection: ``fit`` = epochs of ``train_one_epoch`` + ``evaluate``.

Paper behaviour enters only through a ``Task`` (one training step returning a dict of losses), a
metric function, a learning-rate schedule and callbacks; the loop has no paper branches.

Resume contract: a checkpoint is written at the end of every epoch (after evaluation) with the
model, task extras, optimizer, scaler, EMA, callbacks' state, counters and the RNG states. A run
restarted with ``resume`` continues from the next epoch and, on CPU, produces bit-identical weights
to an uninterrupted run (samplers are seeded per epoch; the schedule is a function of the update
count).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from common.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    capture_rng_state,
    load_checkpoint,
    load_state_dict_strict,
    remove_stale_temp_files,
    restore_rng_state,
    save_checkpoint,
)
from common.cli import resolve_amp
from common.dist import DistContext
from common.ema import ModelEma
from common.pretrained import add_protocol_warnings
from common.run import RunDir, args_to_dict, to_plain
from common.schedule import LRSchedule

_logger = logging.getLogger(__name__)

MetricFn = Callable[[dict[str, torch.Tensor]], dict[str, Any]]
PredictFn = Callable[[nn.Module, Any], dict[str, torch.Tensor]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint is left untouched."""


class Task(nn.Module):
    """One paper's training step. Subclasses implement ``forward(batch) -> {"loss": ..., ...}``.

    Args:
        model: the network. EMA, evaluation and the checkpoint's ``model`` entry use it.

    Extra trainable parameters (learnable loss weights) and buffers (loss statistics) registered
    on the task are optimised and checkpointed with it (checkpoint key ``task``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Evaluation outputs for one batch (batch-first tensors), with ``model`` live or EMA."""
        return {"logits": model(batch[0]), "target": batch[1]}

    def extra_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("model.")}


@dataclass
class FitConfig:
    """Loop settings (built from each entry script's flags by a ``*_from_args`` adaptor).

    ``resume`` is a checkpoint file, a run folder (its ``ckpt_last``, else its ``ckpt_best``) or "auto"
    (``output_dir``'s ``ckpt_last`` when present, else start fresh). ``resume_optimizer=False`` keeps the
    fresh optimizer state; ``resume_start_epoch`` overrides the epoch to continue at. ``eval_live=False``
    with ``eval_ema=True`` evaluates only the EMA copy.

    A fresh start (no checkpoint resumed) rewrites ``csv_name`` from scratch when ``fresh_csv`` (rows of
    an earlier attempt in the same folder would otherwise be duplicated); a resumed run drops the rows
    after the checkpoint's epoch. ``skip_nonfinite`` skips (and counts, ``train_nonfinite_skipped``) a
    batch whose loss is NaN/Inf instead of stopping. ``trainer`` names the entry script in checkpoints
    (default: detected from ``__main__``), so resuming another trainer's checkpoint is reported as such.
    ``compile`` runs the training step (task forward + loss) and the evaluation forward through
    ``torch.compile`` (the checkpoints still hold the plain modules' keys). ``channels_last`` lays image
    batches out as NHWC (``None``: only under bf16 autocast on a CPU, see :func:`resolve_channels_last`).
    """

    epochs: int
    output_dir: str | Path
    amp: str = "none"
    clip_grad: float | None = None
    accum_steps: int = 1
    monitor: str = "mAP"
    monitor_mode: str = "max"
    # an epoch counts as better only when it improves on the best by more than this (fastai's
    # SaveModelCallback / EarlyStoppingCallback ``min_delta``)
    min_delta: float = 0.0
    patience: int | None = None
    eval_ema: bool = False
    select_on_ema: bool = False
    ckpt_last: str = "checkpoint_last.pth"
    ckpt_best: str | None = "checkpoint_best.pth"
    resume: str | None = None
    resume_optimizer: bool = True
    resume_start_epoch: int | None = None
    eval_live: bool = True
    csv_name: str | None = "log.csv"
    csv_columns: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    dataset: str | None = None
    find_unused_parameters: bool = False
    progress: bool = True
    skip_nonfinite: bool = False
    fresh_csv: bool = True
    trainer: str | None = None
    compile: bool = False
    channels_last: bool | None = None
    # sentences for metrics.json ``protocol.warnings`` (e.g. ``common.pretrained.random_init_warning``)
    warnings: Sequence[str] = ()
    # common.predictions.EvalRecorder: saves the predictions of the epoch reported as best (and, in
    # metrics.json, names them with the split manifest and split check); None saves nothing
    recorder: Any = None
    # how images become the model's input (common.preprocessing), stored in every checkpoint for predict.py
    preprocessing: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.monitor_mode not in ("max", "min"):
            raise ValueError(f"monitor_mode must be 'max' or 'min', got '{self.monitor_mode}'")
        if not (self.eval_live or self.eval_ema):
            raise ValueError("eval_live=False needs eval_ema=True (something must be evaluated)")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")


@dataclass
class FitState:
    """What callbacks see and may change (``stop`` ends training after the current epoch)."""

    task: Task
    optimizer: torch.optim.Optimizer
    config: FitConfig
    ctx: DistContext
    run: RunDir
    ema: ModelEma | None = None
    epoch: int = 0
    update: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    stop: bool = False
    stopped_early: bool = False
    channels_last: bool = False  # resolved FitConfig.channels_last
    best_record: dict[str, Any] | None = None
    last_record: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def model(self) -> nn.Module:
        return self.task.model


# ----------------------------------------------------------------------------------------------
# data


def to_device(batch: Any, device: torch.device, *, channels_last: bool = False) -> Any:
    """Move every tensor in a (nested) batch to ``device``; ``channels_last`` also lays out 4-D
    floating tensors (image batches) as NHWC, which the convolutions then keep throughout the net."""
    if isinstance(batch, torch.Tensor):
        out = batch.to(device, non_blocking=True)
        if channels_last and out.dim() == 4 and out.is_floating_point():
            out = out.contiguous(memory_format=torch.channels_last)
        return out
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last=channels_last) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device, channels_last=channels_last) for v in batch)
    return batch


def resolve_channels_last(channels_last: bool | None, amp_dtype: torch.dtype | None, device: torch.device) -> bool:
    """``None`` (auto): NHWC batches exactly when autocasting to bf16 on a CPU, where oneDNN's bf16
    convolutions are much faster in NHWC (the dvxray paper model: bf16 gains 1.2x in NCHW, about 1.5x
    in NHWC; see the README's Performance section); fp32 and CUDA keep the layout unless asked."""
    if channels_last is None:
        return amp_dtype == torch.bfloat16 and device.type == "cpu"
    return bool(channels_last)


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.ndim else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for v in batch:
            n = _batch_size(v)
            if n:
                return n
    return 0


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    ctx: DistContext,
    num_workers: int = 0,
    seed: int = 0,
    sampler: Sampler | None = None,
    batch_sampler: Sampler | None = None,
    drop_last: bool | None = None,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """DataLoader with a distributed-aware sampler seeded per epoch (``fit`` calls ``set_epoch``).

    Args:
        dataset: map-style dataset.
        batch_size: per-process batch size.
        train: shuffle (and pad shards to equal length) when True; evaluation shards are unpadded so
            every sample is scored exactly once.
        ctx: distributed context (rank, world size).
        num_workers: loader worker processes.
        seed: base seed of the shuffling (combined with the epoch).
        sampler / batch_sampler: a custom (e.g. repeat-factor or identity-balanced) sampler.
        drop_last: drop the last incomplete batch (default: True for training, False for eval).
    """
    from common.data.samplers import ShardedRandomSampler

    if drop_last is None:
        drop_last = train
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": ctx.device.type == "cuda",
        "collate_fn": collate_fn,
        "persistent_workers": False,
    }
    if batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    if sampler is None:
        sampler = ShardedRandomSampler(
            len(dataset), shuffle=train, seed=seed, num_replicas=ctx.world_size, rank=ctx.rank,
            drop_last=False, pad=train,
        )
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kwargs)
    if train and len(loader) == 0:
        raise ValueError(
            f"the training set has {len(dataset)} samples per process, fewer than --batch_size {batch_size} "
            "with drop_last: no batch to train on"
        )
    return loader


def updates_per_epoch(loader: DataLoader, accum_steps: int = 1) -> int:
    """Optimizer steps per epoch (for building per-iteration schedules)."""
    return math.ceil(len(loader) / accum_steps)


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    for obj in (loader.sampler, loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)


# ----------------------------------------------------------------------------------------------
# loops


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _set_momentum(group: dict, momentum: float) -> None:
    if "betas" in group:
        group["betas"] = (momentum, group["betas"][1])
    elif "momentum" in group:
        group["momentum"] = momentum


def _progress(iterable: Iterable, desc: str, enabled: bool, total: int | None = None):
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, dynamic_ncols=True,
                mininterval=1.0 if interactive else 30.0, leave=interactive)


class _Meters:
    """Sample-weighted running means of scalar outputs, reduced across ranks at the end."""

    def __init__(self) -> None:
        # tensor sums stay on their device: no host synchronisation per training step
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def update(self, out: Mapping[str, Any], n: int) -> None:
        for k, v in out.items():
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                self.sums[k] = self.sums.get(k, 0.0) + v.detach().double().reshape(()) * n
            elif isinstance(v, float | int) and not isinstance(v, bool):
                self.sums[k] = self.sums.get(k, 0.0) + float(v) * n
        self.count += n

    def averages(self, ctx: DistContext) -> dict[str, float]:
        keys = sorted(self.sums)
        t = torch.tensor([float(self.sums[k]) for k in keys] + [float(self.count)], dtype=torch.float64,
                         device=ctx.device if ctx.device.type == "cuda" else "cpu")
        if ctx.distributed:
            torch.distributed.all_reduce(t)
        total = max(t[-1].item(), 1.0)
        return {k: t[i].item() / total for i, k in enumerate(keys)}


def train_one_epoch(
    task: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    *,
    state: FitState,
    schedule: LRSchedule | None,
    scaler: torch.amp.GradScaler,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    """Train for one epoch; returns the epoch's sample-weighted means of the task's scalars and lr."""
    config, ctx = state.config, state.ctx
    device = ctx.device
    task.train()
    meters = _Meters()
    optimizer.zero_grad(set_to_none=True)
    n_batches = len(loader)
    accum = config.accum_steps
    params = [p for g in optimizer.param_groups for p in g["params"]]
    bar = _progress(loader, f"epoch {state.epoch}", ctx.is_primary and config.progress, total=n_batches)
    skipped = 0
    ddp = getattr(task, "_orig_mod", task)  # under torch.compile the DDP module is wrapped
    for i, batch in enumerate(bar):
        boundary = (i + 1) % accum == 0 or i + 1 == n_batches
        if schedule is not None and (i % accum == 0):
            momentum_for = getattr(schedule, "momentum_for", None)
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_for(state.update, group)
                if momentum_for is not None:  # one-cycle schedules also cycle Adam's beta1 / SGD momentum
                    _set_momentum(group, momentum_for(state.update))
        batch = to_device(batch, device, channels_last=state.channels_last)
        sync = nullcontext()
        if isinstance(ddp, DistributedDataParallel) and not boundary:
            sync = ddp.no_sync()
        with sync:
            with _autocast(device, amp_dtype):
                out = task(batch)
            loss = out["loss"]
            finite = torch.isfinite(loss.detach()).float()
            if ctx.distributed:
                finite = ctx.all_reduce_mean(finite)
            if finite.item() < 1.0:
                where = (f"epoch {state.epoch}, iteration {i} of {n_batches} (global step {state.epoch * n_batches + i}, "
                         f"after optimizer update {state.update})")
                if not config.skip_nonfinite:
                    last = Path(config.output_dir) / config.ckpt_last
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss.item()}) at {where}; training stopped. "
                        f"Last good checkpoint: {last if last.is_file() else 'none written yet'}"
                    )
                # CXR-LT's loop: skip the batch (and the gradients accumulated in its window), count it
                skipped += 1
                _logger.warning("non-finite loss (%s) at %s: batch skipped (%d this epoch)", loss.item(), where,
                                skipped)
                optimizer.zero_grad(set_to_none=True)
                continue
            scaler.scale(loss / accum).backward()
        if boundary:
            if config.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            state.update += 1
            if state.ema is not None:
                state.ema.update(state.task.model)
        meters.update(out, _batch_size(batch))
        if ctx.is_primary and config.progress and i % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", refresh=False)
    stats = meters.averages(ctx)
    stats["lr"] = optimizer.param_groups[0]["lr"]
    if config.skip_nonfinite:
        stats["nonfinite_skipped"] = float(skipped)
    return stats


@torch.inference_mode()
def collect_outputs(
    model: nn.Module,
    loader: DataLoader,
    *,
    predict_fn: PredictFn,
    ctx: DistContext,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, torch.Tensor]:
    """Run ``predict_fn`` over a loader and return its outputs concatenated over the whole set
    (gathered from every rank, on CPU; floating outputs in float32)."""
    was_training = model.training
    model.eval()
    # an EMA copy may live on another device than the live model (e.g. EMA kept on CPU)
    first = next(model.parameters(), None)
    device = first.device if first is not None else ctx.device
    parts: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        batch = to_device(batch, device, channels_last=channels_last)
        with _autocast(device, amp_dtype if device.type == ctx.device.type else None):
            out = predict_fn(model, batch)
        for k, v in out.items():
            v = v.detach()
            parts.setdefault(k, []).append(v.float() if v.is_floating_point() else v)
    model.train(was_training)
    if not parts:
        raise ValueError("the evaluation loader yielded no batch")
    return {k: ctx.all_gather_cat(torch.cat(v).to(ctx.device)).cpu() for k, v in parts.items()}


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    *,
    predict_fn: PredictFn,
    metric_fn: MetricFn,
    ctx: DistContext,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on ``loader``: metrics computed once on the whole set (all ranks agree)."""
    outputs = collect_outputs(model, loader, predict_fn=predict_fn, ctx=ctx, amp_dtype=amp_dtype,
                              channels_last=channels_last)
    return metric_fn(outputs)


# ----------------------------------------------------------------------------------------------
# fit


def _resolve_resume(resume: str | None, config: FitConfig) -> Path | None:
    if resume is None or resume == "":
        return None
    if resume == "auto":
        path = Path(config.output_dir) / config.ckpt_last
        return path if path.is_file() else None
    path = Path(resume)
    if path.is_dir():
        folder = path
        path = folder / config.ckpt_last
        if not path.is_file() and config.ckpt_best and (folder / config.ckpt_best).is_file():
            path = folder / config.ckpt_best
    if not path.is_file():
        raise CheckpointError(f"--resume: checkpoint not found: {path}")
    return path


def _callback_key(i: int, cb: Any) -> str:
    return f"{i}:{type(cb).__name__}"


def _is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value - min_delta > best if mode == "max" else value + min_delta < best


def _metrics_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("val_"):]: v for k, v in record.items() if k.startswith("val_")}


def fit(
    task: Task,
    optimizer: torch.optim.Optimizer,
    data_loader_train: DataLoader,
    *,
    config: FitConfig,
    ctx: DistContext,
    run: RunDir,
    schedule: LRSchedule | None = None,
    data_loader_val: DataLoader | None = None,
    metric_fn: MetricFn | None = None,
    ema: ModelEma | None = None,
    callbacks: Sequence[Any] = (),
    args: Any = None,
) -> dict[str, Any]:
    """Train ``task`` for ``config.epochs`` epochs with evaluation, checkpoints, logs and resume.

    Args:
        task: the paper's Task, already on ``ctx.device`` (create ``ema`` after moving it).
        optimizer: over ``task.parameters()`` (param groups may carry ``lr_scale``).
        data_loader_train: training loader (``build_loader`` makes a resumable one).
        config: loop settings.
        ctx: distributed context; the task is wrapped in DDP here when world size > 1.
        run: the output folder (logs, CSV, metrics.json).
        schedule: learning rate per optimizer update (None keeps the optimizer's lr).
        data_loader_val: evaluation loader; ``metric_fn`` turns gathered outputs into metrics.
        ema: model EMA updated after every optimizer step, saved, and evaluated if
            ``config.eval_ema``.
        callbacks: objects with optional ``on_fit_start``, ``on_epoch_start``, ``on_epoch_end``,
            ``csv_row``, ``state_dict``/``load_state_dict``.
        args: resolved arguments stored in checkpoints.

    Returns:
        The content of ``metrics.json``.
    """
    amp_dtype = resolve_amp(config.amp, ctx.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16 and ctx.device.type == "cuda")
    state = FitState(task=task, optimizer=optimizer, config=config, ctx=ctx, run=run, ema=ema)
    state.channels_last = resolve_channels_last(config.channels_last, amp_dtype, ctx.device)
    if state.channels_last:
        _logger.info("channels_last: image batches as NHWC%s",
                     " (auto: bf16 autocast on CPU)" if config.channels_last is None else "")
    out_dir = Path(config.output_dir)
    csv_log = run.csv(config.csv_name, config.csv_columns) if config.csv_name else None
    monitor_key = f"val_{config.monitor}" + ("_ema" if config.select_on_ema else "")
    if (config.select_on_ema or config.eval_ema) and ema is None:
        raise ValueError("eval_ema/select_on_ema need an EMA model")

    if ctx.is_primary:
        for stale in remove_stale_temp_files(out_dir):
            _logger.info("removed %s, left by an interrupted write", stale)
        # metrics.json marks a completed fit: one from an earlier attempt (or an earlier phase in the same
        # folder) must not make an interrupted run look finished
        (out_dir / "metrics.json").unlink(missing_ok=True)
    start_epoch = 0
    trainer = config.trainer or entry_point()
    resume_path = _resolve_resume(config.resume, config)
    if resume_path is not None:
        try:
            start_epoch = _load_resume(resume_path, state, scaler, callbacks, load_optimizer=config.resume_optimizer,
                                       args=args, trainer=trainer)
        except CheckpointError as exc:
            if not str(exc).startswith("cannot read checkpoint"):
                raise
            # the file itself is unreadable: name a readable best checkpoint of the same run
            raise CheckpointError(f"{exc}{_previous_good_hint(resume_path, config)}") from None
        if ctx.is_primary:
            _repair_best(resume_path, state, config, resumed_epoch=start_epoch - 1)
        if config.resume_start_epoch is not None:
            start_epoch = config.resume_start_epoch
        _logger.info("resumed from %s: continuing at epoch %d (update %d)", resume_path, start_epoch, state.update)
        if csv_log is not None:
            csv_log.truncate_from(start_epoch)
    elif csv_log is not None and config.fresh_csv:
        # a fresh start: rows of an earlier attempt (killed before its first checkpoint) must not stay
        csv_log.reset()

    train_module: nn.Module = task
    if ctx.distributed:
        train_module = DistributedDataParallel(
            task, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters,
        )

    eval_model: nn.Module = task.model
    eval_ema_model: nn.Module | None = ema.module if ema is not None else None
    if config.compile:
        # Compiled wrappers share the parameters; only the plain modules are ever saved, so checkpoint
        # keys carry no ``_orig_mod.`` prefix. DDP is wrapped first, as torch's DDP + dynamo notes ask.
        train_module = torch.compile(train_module)
        eval_model = torch.compile(task.model)
        if eval_ema_model is not None and config.eval_ema:
            eval_ema_model = torch.compile(eval_ema_model)
        _logger.info("torch.compile: on; the first training and evaluation steps compile (minutes on a CPU)")

    for cb in callbacks:
        if hasattr(cb, "on_fit_start"):
            cb.on_fit_start(state)

    last_record: dict[str, Any] | None = None
    recorder_order = None  # dataset index of each gathered evaluation row (a collective under DDP)
    if config.recorder is not None and config.recorder.writer is not None and data_loader_val is not None:
        from common.predictions import loader_order

        recorder_order = loader_order(data_loader_val, ctx)
    monitored_outputs: dict[str, torch.Tensor] | None = None
    last_outputs: tuple[int, dict[str, torch.Tensor]] | None = None
    for epoch in range(start_epoch, config.epochs):
        state.epoch = epoch
        _set_epoch(data_loader_train, epoch)
        for cb in callbacks:
            if hasattr(cb, "on_epoch_start"):
                cb.on_epoch_start(state)
        t0 = time.time()
        train_stats = train_one_epoch(train_module, data_loader_train, optimizer, state=state, schedule=schedule,
                                      scaler=scaler, amp_dtype=amp_dtype)
        record: dict[str, Any] = {"epoch": epoch, **{f"train_{k}": v for k, v in train_stats.items()}}
        if data_loader_val is not None and metric_fn is not None:
            if config.eval_live:
                outputs = collect_outputs(eval_model, data_loader_val, predict_fn=task.predict, ctx=ctx,
                                          amp_dtype=amp_dtype, channels_last=state.channels_last)
                record.update({f"val_{k}": v for k, v in metric_fn(outputs).items()})
                if not config.select_on_ema:
                    monitored_outputs = outputs
            if config.eval_ema:
                outputs = collect_outputs(eval_ema_model, data_loader_val, predict_fn=task.predict, ctx=ctx,
                                          amp_dtype=amp_dtype, channels_last=state.channels_last)
                record.update({f"val_{k}_ema": v for k, v in metric_fn(outputs).items()})
                if config.select_on_ema or not config.eval_live:
                    monitored_outputs = outputs
            del outputs
        record["epoch_time"] = time.time() - t0
        record = to_plain(record)

        is_best = False
        if monitor_key in record:
            value = float(record[monitor_key])
            if _is_better(value, state.best_metric, config.monitor_mode, config.min_delta):
                state.best_metric, state.best_epoch, state.epochs_since_best = value, epoch, 0
                state.best_record = record
                is_best = True
            else:
                state.epochs_since_best += 1
        elif data_loader_val is not None and metric_fn is not None:
            raise KeyError(f"monitored metric '{monitor_key}' not among the evaluation results {sorted(record)}")

        if recorder_order is not None and ctx.is_primary and monitored_outputs is not None:
            if is_best:  # the predictions behind metrics.json's "best" section
                config.recorder.save(out_dir, monitored_outputs, recorder_order, epoch=epoch)
            else:  # kept in case no epoch ever counts as best ("best" then reports the last epoch)
                last_outputs = (epoch, monitored_outputs)
        monitored_outputs = None
        for cb in callbacks:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(state, record)
        state.history.append({k: v for k, v in record.items() if not isinstance(v, list | tuple)})

        _log_epoch(record, monitor_key, state)
        if csv_log is not None:
            row = None
            for cb in callbacks:
                if hasattr(cb, "csv_row"):
                    row = cb.csv_row(state, record)
            if row is None:
                row = {k: v for k, v in record.items() if not isinstance(v, list | tuple | dict)}
            csv_log.append(row)

        if config.patience is not None and state.epochs_since_best >= config.patience:
            _logger.info("early stopping: %s did not improve for %d epochs (best %.6g at epoch %s)",
                         monitor_key, state.epochs_since_best, state.best_metric, state.best_epoch)
            state.stop = True
            state.stopped_early = True

        if ctx.is_primary:
            state.last_record = record
            ckpt = _checkpoint_state(state, scaler, callbacks, args, trainer)
            # ``ckpt_last`` is the commit point and is written first: a kill before it leaves both files
            # at the previous epoch; a kill between the two leaves ``ckpt_last`` naming this epoch as best
            # while ``ckpt_best`` is older, which the resumed run repairs (``_repair_best``) from
            # ``ckpt_last``, whose content is then exactly what ``ckpt_best`` should hold.
            save_checkpoint(out_dir / config.ckpt_last, ckpt)
            if is_best and config.ckpt_best:
                save_checkpoint(out_dir / config.ckpt_best, ckpt)
        ctx.barrier()
        last_record = record
        if state.stop:
            break

    if last_record is None:  # resumed a finished run: report what the checkpoint holds
        last_record = state.last_record or {}
    best_record = state.best_record if state.best_record is not None else last_record
    summary = {
        "monitor": monitor_key[len("val_"):] if monitor_key.startswith("val_") else monitor_key,
        "monitor_mode": config.monitor_mode,
        "best_epoch": state.best_epoch,
        "best": _metrics_summary(best_record),
        "final": _metrics_summary(last_record),
        "final_train": {k[len("train_"):]: v for k, v in last_record.items() if k.startswith("train_")},
        "epochs_run": (last_record.get("epoch", -1) + 1) if last_record else 0,
        "stopped_early": state.stopped_early,
    }
    if config.class_names is not None:
        summary["class_names"] = list(config.class_names)
    if config.dataset is not None:
        summary["dataset"] = config.dataset
    add_protocol_warnings(summary, config.warnings)
    if config.recorder is not None:
        if state.best_record is None and last_outputs is not None and ctx.is_primary:
            config.recorder.save(out_dir, last_outputs[1], recorder_order, epoch=last_outputs[0])
        summary.update(config.recorder.metrics_entries(out_dir))
    run.write_json("metrics.json", summary)
    return summary


def _log_epoch(record: Mapping[str, Any], monitor_key: str, state: FitState) -> None:
    shown = {k: v for k, v in record.items() if isinstance(v, float | int) and not isinstance(v, bool)}
    text = " ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
    best = "" if state.best_metric is None else f" | best {monitor_key}={state.best_metric:.5g} @ {state.best_epoch}"
    _logger.info("%s%s", text, best)


def _checkpoint_state(state: FitState, scaler: torch.amp.GradScaler, callbacks: Sequence[Any], args: Any,
                      trainer: str | None = None) -> dict:
    return {
        "model": state.task.model.state_dict(),
        "task": state.task.extra_state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        # schedules are functions of the update count: that count is their whole state
        "scheduler": {"update": state.update},
        "ema": state.ema.state_dict() if state.ema is not None else None,
        "epoch": state.epoch,
        "update": state.update,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
        "epochs_since_best": state.epochs_since_best,
        "rng": capture_rng_state(),
        "args": args_to_dict(args),
        "stopped_early": state.stopped_early,
        "best_record": state.best_record,
        "last_record": state.last_record,
        "extra": {_callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")},
        "trainer": trainer,
        "preprocessing": dict(state.config.preprocessing) if state.config.preprocessing else None,
    }


def _load_resume(path: Path, state: FitState, scaler: torch.amp.GradScaler, callbacks: Sequence[Any], *,
                 load_optimizer: bool = True, args: Any = None, trainer: str | None = None) -> int:
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [k for k in ("model", "optimizer", "epoch", "update", "rng") if k not in ckpt]
    if missing:
        raise CheckpointError(f"--resume: {path} is not a training checkpoint of this project (missing {missing})")
    origin = describe_origin_mismatch(ckpt, args, trainer)
    if origin.startswith("written by"):  # another trainer: nothing below could fit
        raise CheckpointError(f"--resume: {path} does not fit this run: {origin}")
    if origin:
        # continuing with other flags would give a run that is neither setting (a result is reused only for
        # the arguments that produced it); the flags that do not change the result are _RUN_ONLY_ARGS
        raise CheckpointError(f"--resume: {path} was written with other arguments: {origin}; rerun with the "
                              "checkpoint's values, or start a new run in another output folder without --resume")
    task = state.task
    full = {f"model.{k}": v for k, v in ckpt["model"].items()}
    full.update(ckpt.get("task") or {})
    try:
        load_state_dict_strict(task, full, f"--resume {path}")
        if load_optimizer:
            state.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if state.ema is not None:
            if ckpt.get("ema") is None:
                raise CheckpointError(f"--resume: {path} holds no EMA state but this run uses EMA")
            state.ema.load_state_dict(ckpt["ema"])
        extra = ckpt.get("extra") or {}
        for i, cb in enumerate(callbacks):
            key = _callback_key(i, cb)
            if hasattr(cb, "load_state_dict") and key in extra:
                cb.load_state_dict(extra[key])
    except (CheckpointError, RuntimeError, ValueError, KeyError, TypeError) as exc:
        # torch's load_state_dict reports are multi-line; name the checkpoint and the likely cause instead
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, CheckpointError):
            text = f"--resume {path}: cannot restore the training state ({type(exc).__name__}: {text})"
        raise CheckpointError(f"{text}; {origin}" if origin else text) from None
    state.update = int(ckpt["update"])
    state.best_metric = ckpt.get("best_metric")
    state.best_epoch = ckpt.get("best_epoch")
    state.epochs_since_best = int(ckpt.get("epochs_since_best", 0))
    state.best_record = ckpt.get("best_record")
    state.last_record = ckpt.get("last_record")
    state.stopped_early = bool(ckpt.get("stopped_early", False))
    restore_rng_state(ckpt["rng"])
    return int(ckpt["epoch"]) + 1


# ----------------------------------------------------------------------------------------------
# resume diagnostics and repair


def entry_point() -> str | None:
    """The running entry script as a repository path (``dcal/scripts/train_fgvc.py``), or None when the
    process was not started from a script of this repository (e.g. under pytest)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    origin = getattr(spec, "origin", None) or getattr(main, "__file__", None)
    if not origin:
        return None
    root = Path(__file__).resolve().parents[1]
    try:
        rel = Path(origin).resolve().relative_to(root)
    except ValueError:
        return None
    # only files inside one of the repository's packages (not .venv/..., not a stray script)
    if len(rel.parts) < 2 or not (root / rel.parts[0] / "__init__.py").is_file():
        return None
    return rel.as_posix()


# arguments that name where a run lives, how long it goes on, or how fast it computes the same maths:
# a checkpoint written with other values of these resumes (any other difference is refused)
_RUN_ONLY_ARGS = frozenset({
    "resume", "resume_epoch", "resume_optimizer", "resume_scheduler", "output_dir", "save_dir", "device", "gpu",
    "num_workers", "epochs", "max_epoch", "num_epochs", "n_trials", "opts", "exp_name", "log_interval",
    "save_interval",
    # weights a run starts from: a resumed run continues from its checkpoint instead
    "finetune", "pretrained_checkpoint", "pretrained_path", "pretrained_weights", "model_path",
    "compile", "channels_last", "no_progress", "plots", "overwrite", "pin_mem", "print_freq", "dist_url",
    "world_size", "local_rank", "dist_on_itp", "log_dir", "keep_stage_checkpoints",
})


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return " ".join(_show(v) for v in value) or "[]"
    if value is None or value == "":
        return "none" if value is None else "''"
    return str(value)


def describe_origin_mismatch(ckpt: Mapping[str, Any], args: Any, trainer: str | None = None) -> str:
    """Why a checkpoint may not fit this run, from the ``trainer`` and ``args`` it records.

    Returns:
        "written by <script>..." when another trainer wrote it, else up to four differing arguments as
        "<key> <value> in the checkpoint, <value> on the command line", else "".
    """
    theirs = ckpt.get("trainer")
    if theirs and trainer and theirs != trainer:
        return f"written by {theirs}, not {trainer}"
    mine_args = _flatten(args_to_dict(args)) if args is not None else {}
    their_args = _flatten(ckpt.get("args") or {})
    if not mine_args or not their_args:
        return f"written by {theirs}" if theirs and theirs != trainer else ""
    shared = mine_args.keys() & their_args.keys()
    if len(shared) < 0.5 * min(len(mine_args), len(their_args)):
        shown = ", ".join(sorted(their_args)[:5])
        return (f"written by {theirs or 'another trainer'} (its arguments {shown}, ... share few names with "
                "this run's)")
    diffs = [k for k in sorted(shared) if mine_args[k] != their_args[k] and k.split(".")[-1] not in _RUN_ONLY_ARGS]
    if not diffs:
        return ""
    text = "; ".join(f"{k} {_show(their_args[k])} in the checkpoint, {_show(mine_args[k])} on the command line"
                     for k in diffs[:4])
    return text + (f" (and {len(diffs) - 4} more differences)" if len(diffs) > 4 else "")


def _peek_epoch(path: Path) -> int | None:
    """The ``epoch`` a checkpoint holds (memory-mapped read), or None if it is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # any unreadable file counts as "not this epoch"; it is rewritten below
        return None
    return int(obj["epoch"]) if isinstance(obj, dict) and isinstance(obj.get("epoch"), int) else None


def _repair_best(resume_path: Path, state: FitState, config: FitConfig, *, resumed_epoch: int) -> None:
    """Make ``ckpt_best`` hold the epoch ``ckpt_last`` names as best after a kill between the two writes.

    Only the case a kill can produce is repaired: ``ckpt_last`` is itself the best epoch (both files get
    the same content in that epoch), so copying it is exact.
    """
    if not config.ckpt_best or state.best_epoch is None:
        return
    out_dir = Path(config.output_dir)
    if resume_path.resolve() != (out_dir / config.ckpt_last).resolve():
        return
    best = out_dir / config.ckpt_best
    best_epoch = _peek_epoch(best)
    if best_epoch == state.best_epoch:
        return
    if resumed_epoch == state.best_epoch:
        _logger.warning("%s holds epoch %s but %s names epoch %d as best (a kill between the two writes): "
                        "rewriting it from %s", best, best_epoch, resume_path.name, state.best_epoch, resume_path.name)
        atomic_write_bytes(resume_path.read_bytes(), best)
    else:
        _logger.warning("%s holds epoch %s but %s names epoch %d as best; it cannot be rebuilt", best,
                        best_epoch, resume_path.name, state.best_epoch)


def _previous_good_hint(path: Path, config: FitConfig) -> str:
    """For an unreadable ``ckpt_last``: name a readable ``ckpt_best`` in the same folder to resume from."""
    if not config.ckpt_best or path.name != config.ckpt_last:
        return ""
    best = path.parent / config.ckpt_best
    epoch = _peek_epoch(best)
    if epoch is None:
        return ""
    return f" (the previous good checkpoint is {best}, epoch {epoch}: pass it to --resume)"


class EpochCounter:
    """Callback counting the epochs a ``fit`` call trained (0 when it resumed an already finished run)."""

    def __init__(self) -> None:
        self.count = 0

    def on_epoch_end(self, state: FitState, record: dict[str, Any]) -> None:
        self.count += 1
