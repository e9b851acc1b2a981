"""The training loop: :func:`fit`.

One loop for every paper: an objective (see :mod:`advrep.train.objectives`) turns a batch into a loss; the loop
does augmentation, the lr and epsilon schedules, mixed precision, the optimizer step, EMA, per-epoch checkpoints
(atomic, resumable, bit-identical on CPU), validation, NaN detection and progress reporting.

Reproducibility: at the start of every epoch the global torch/numpy/python RNGs are seeded from ``(seed, epoch)``
and the sampler of a shuffling DataLoader gets a ``torch.Generator`` seeded from ``(seed, epoch)`` (the worker base
seed likewise); in-loop augmentation uses its own seed per ``(seed, epoch, batch)``.  So each epoch's random
numbers depend only on the seed and the epoch, never on what ran before (validation, callbacks, a resume).  The RNG
states are also checkpointed and restored on resume.  On CPU a resumed run therefore reproduces the uninterrupted
one bit for bit; on CUDA, kernels are not bitwise deterministic unless the caller enables deterministic algorithms.

Mixed precision (``amp``, see :func:`resolve_amp`): the objective's forward pass (including an adversarial inner
loop) and validation run under ``torch.autocast``; the weights and the optimizer state stay in float32 (and autocast
computes losses such as the cross-entropy in float32).  ``"auto"`` turns it on on CUDA only (bf16 where supported,
else fp16).  ``"bf16"`` and ``"fp16"`` may be asked for explicitly on CUDA or on the CPU (CPU autocast supports
both); fp16 always comes with a ``torch.amp.GradScaler`` for the device, whose state is checkpointed and restored on
resume, so an fp16 run resumes bit for bit on CPU like an fp32 one.  On CPU, mixed precision is mainly a way to
exercise (and test) this path on machines without a GPU: it is not expected to be faster than float32 there.
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler
from tqdm.auto import tqdm

from .augment import Augment, make_augment
from .checkpoint import FORMAT, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .context import STREAM_AUGMENT, STREAM_DATA, STREAM_EPOCH, STREAM_WORKERS, EpochContext, derive_seed, generator
from .ema import EMA, make_ema
from .objectives import Objective, make_objective
from .schedules import LRSchedule, OptimizerSpec, ScheduleSpec, make_eps_schedule, schedule_spec

logger = logging.getLogger("advrep.train")

CHECKPOINT = "last.pt"
FINAL = "final.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite: training stops (the last completed epoch's checkpoint is kept)."""


@dataclass
class TrainResult:
    """``history``: one dict per epoch (``epoch`` 0-based, ``loss``, ``acc``, ``images_per_s``, ``lr``, ``eps``,
    ``time_s``, objective metrics, and ``val_loss``/``val_acc`` with a validation loader).  ``model``: the trained
    model; ``ema``: the :class:`EMA` or None; ``eval_model``: the EMA model when enabled, else ``model``."""

    history: list[dict]
    model: nn.Module
    ema: EMA | None
    seed: int
    device: str
    amp: str | None
    checkpoint: Path
    final: Path
    resumed_from: int | None = None  # epochs already completed in the checkpoint resumed from

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model


class IndexedSample(NamedTuple):
    """A sample (or, collated by a DataLoader, a batch) that knows its position in the training set."""

    x: torch.Tensor
    y: torch.Tensor
    index: int | torch.Tensor


class IndexedDataset(Dataset):
    """``dataset[i] = (x, y, ...)`` -> ``IndexedSample(x, y, i)``: batches then carry the samples' training-set
    indices, which :func:`fit` hands to the objective as ``ctx.index`` (e.g. for per-sample tables computed once
    per training set, such as the Voronoi constraints).  Loaders of plain ``(x, y)`` batches give ``ctx.index =
    None``.  Wrap outermost (``IndexedDataset(AugmentedDataset(ds))``): the default collate keeps the named tuple,
    and ``set_epoch`` and other attributes are forwarded to the wrapped dataset.  Adds no random numbers, so
    checkpoint/resume stays bit-identical."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        return IndexedSample(item[0], item[1], int(i))

    def __getattr__(self, name):  # set_epoch, augment, ... of the wrapped dataset
        if name == "dataset":  # not yet set (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


def batch_index(batch) -> torch.Tensor | None:
    """The training-set indices a batch carries (the ``index`` field of a named tuple such as
    :class:`IndexedSample`), or None (plain tuples and lists: their ``index`` is a method)."""
    if "index" not in getattr(batch, "_fields", ()):
        return None
    return torch.as_tensor(batch.index)


def resolve_device(device) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


AMP_CHOICES = ("auto", "off", "bf16", "fp16")
_AMP_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
_AMP_DEVICES = ("cuda", "cpu")  # device types on which an explicit bf16/fp16 request is honoured


def resolve_amp(amp, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None (mixed precision off).

    ``"auto"``: on CUDA bf16 where supported, else fp16 (with a GradScaler); off on every other device (CPU
    included).  ``"bf16"``/``"bfloat16"`` and ``"fp16"``/``"float16"`` force that type on CUDA or on the CPU (torch's
    CPU autocast supports both, and fp16 gets a ``GradScaler("cpu")``); any other device raises.
    ``"off"``/``"none"``/``"fp32"``/``None``/``False`` disable.  Anything else raises a ValueError naming the
    allowed values.
    """
    if amp in (None, False, "off", "none", "fp32"):
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if not isinstance(amp, str) or amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(repr(c) for c in AMP_CHOICES)} (or None/False to disable; "
                         f"'bfloat16'/'float16' are accepted too), got {amp!r}")
    if device.type not in _AMP_DEVICES:
        raise ValueError(f"mixed precision ({amp}) is supported on CUDA and CPU only; this run is on {device} "
                         "(use amp='auto' or 'off')")
    return _AMP_DTYPES[amp]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _seed_epoch(seed: int, epoch: int) -> None:
    seed_everything(derive_seed(seed, STREAM_EPOCH, epoch))


def _prepare_loader(loader, seed: int, epoch: int) -> None:
    """Fix this epoch's data order (and worker seeds) from (seed, epoch)."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(loader, DataLoader):
        loader.generator = generator(seed, STREAM_WORKERS, epoch)
        if loader.persistent_workers and hasattr(loader.dataset, "set_epoch"):
            raise ValueError("persistent_workers=True keeps a stale epoch in the workers' dataset copies; "
                             "use persistent_workers=False with AugmentedDataset")
    if sampler is not None and not isinstance(sampler, SequentialSampler):
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif hasattr(sampler, "generator"):
            sampler.generator = generator(seed, STREAM_DATA, epoch)
        else:
            logger.warning("sampler %s has no generator: data order may differ after a resume",
                           type(sampler).__name__)
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, objective: Objective,
               optimizer: torch.optim.Optimizer, ctx: EpochContext, *, scaler=None,
               amp_dtype: torch.dtype | None = None, clip_grad_norm: float | None = None):
    """One optimizer step; returns (loss value, logits or None).  Raises :class:`NonFiniteLossError` on NaN/inf."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    try:
        with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, logits = objective(model, x, y, ctx)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise TypeError(f"objective {objective!r} must return (scalar loss tensor, logits), got loss "
                            f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training stopped: loss is {value} at epoch {ctx.epoch} (0-based, of {ctx.epochs}), batch "
                f"{ctx.batch} of {ctx.steps_per_epoch} (global step {ctx.step}), lr {ctx.lr:g}. The checkpoint of "
                "the last completed epoch is kept; lower the learning rate or fix the objective/data, then rerun.")
        (scaler.scale(loss) if scaler is not None else loss).backward()
    finally:
        objective.after_backward(model, ctx)  # e.g. AWP puts the unperturbed weights back
    if clip_grad_norm is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return value, (logits.detach() if isinstance(logits, torch.Tensor) else None)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device=None, amp_dtype: torch.dtype | None = None) -> dict:
    """Clean cross-entropy and accuracy of ``model`` (eval mode) over ``loader``."""
    device = resolve_device(device) if device is not None else next(model.parameters()).device
    was = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    try:
        for batch in loader:
            x, y = batch[0].to(device), batch[1].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was)
    return {"loss": loss_sum / max(total, 1), "acc": correct / max(total, 1)}


def _build_optimizer(optimizer, model) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if isinstance(optimizer, OptimizerSpec):
        return optimizer.build(model)
    if isinstance(optimizer, (str, dict)):
        from .config import optimizer_spec

        return optimizer_spec(optimizer).build(model)
    raise TypeError(f"optimizer must be a torch Optimizer, an OptimizerSpec or a config dict, got {optimizer!r}")


def _build_schedule(schedule, optimizer, epochs, steps_per_epoch) -> LRSchedule | None:
    if schedule is None or isinstance(schedule, LRSchedule):
        return schedule
    if isinstance(schedule, (str, dict)):
        schedule = schedule_spec(schedule)
    if isinstance(schedule, ScheduleSpec):
        return schedule.build(optimizer, epochs, steps_per_epoch)
    raise TypeError(f"schedule must be an LRSchedule, a ScheduleSpec, a config dict or None, got {schedule!r} "
                    "(torch lr_scheduler objects are not supported: their step granularity is ambiguous)")


def fit(model: nn.Module, train_loader, *, objective, epochs: int, optimizer, schedule=None,
        checkpoint_dir: str | Path, seed: int, device="auto", val_loader=None, ema=None, eps_schedule=None,
        amp="auto", augment=None, clip_grad_norm: float | None = None, log_every: int = 50, progress: bool = True,
        callbacks: Sequence[Callable[[int, dict], None]] = ()) -> TrainResult:
    """Train ``model`` (inputs in [0, 1]) for ``epochs`` epochs, checkpointing after every epoch.

    ``objective``: an :class:`Objective`, a name or a config dict.  ``optimizer``: a torch optimizer over the
    model's parameters, an :class:`OptimizerSpec` or a config dict.  ``schedule``: an :class:`LRSchedule`, a
    :class:`ScheduleSpec`, a config dict/name or None (constant lr).  ``eps_schedule``: an :class:`EpsSchedule`,
    ramp epochs or a dict.  ``ema``: a decay, an :class:`EMA` or None.  ``augment``: an :class:`Augment`, a config
    (``"crop_flip"``, a list, ...) or None; applied per batch on the CPU before moving to the device.
    ``callbacks``: ``cb(epoch, record)`` after each epoch's checkpoint is written.  Batches are ``(x, y, ...)``;
    those of an :class:`IndexedDataset` also carry the samples' training-set indices, passed on as ``ctx.index``.

    ``checkpoint_dir/last.pt`` is written atomically after every epoch (model, optimizer, schedule, EMA, GradScaler,
    objective state, RNG states, epoch, history, seed, device); if it exists when ``fit`` starts, training resumes
    from it (a checkpoint of a finished run just returns).  At the end ``checkpoint_dir/final.pt`` holds the
    evaluation weights (``"model"``: EMA weights when enabled) and the history: a Snakemake rule should declare
    ``final.pt`` as its output, never ``last.pt`` (Snakemake deletes the outputs of a failed job).
    ``device="auto"``: CUDA when available.  ``amp``: ``"auto"`` (default) is mixed precision on CUDA only (bf16
    where supported, else fp16); ``"bf16"`` or ``"fp16"`` force it, on CUDA or on the CPU; ``"off"``/None disable
    (see :func:`resolve_amp`).  With fp16 a ``torch.amp.GradScaler`` scales the loss; its state is checkpointed and
    restored on resume.  The type used is recorded as ``"bf16"``/``"fp16"``/None in ``TrainResult.amp`` and under
    ``"amp"`` in ``last.pt`` and ``final.pt``.
    """
    if epochs < 0:
        raise ValueError("epochs must be >= 0")
    seed = int(seed)
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    amp_name = {None: None, torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    model.to(dev)
    objective = make_objective(objective)
    if augment is not None and not callable(augment):
        augment = make_augment(augment)  # a config: name, dict or list
    eps_schedule = make_eps_schedule(eps_schedule)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch < 1:
        raise ValueError("the training loader is empty")
    optimizer = _build_optimizer(optimizer, model)
    schedule = _build_schedule(schedule, optimizer, epochs, steps_per_epoch)
    ema = make_ema(ema)
    if ema is not None:
        ema.attach(model)
    scaler = torch.amp.GradScaler(dev.type) if amp_dtype == torch.float16 else None

    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_dir / CHECKPOINT
    final_path = checkpoint_dir / FINAL
    history: list[dict] = []
    start_epoch, resumed_from = 0, None
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=dev)
        _restore(state, ckpt_path, seed=seed, steps_per_epoch=steps_per_epoch, epochs=epochs, model=model,
                 optimizer=optimizer, schedule=schedule, ema=ema, scaler=scaler, objective=objective,
                 amp_name=amp_name)
        start_epoch = resumed_from = int(state["epoch"])
        history = [dict(r) for r in state["history"]]
        logger.info("resuming from %s: %d of %d epochs done", ckpt_path, start_epoch, epochs)
    else:
        seed_everything(seed)

    logger.info("training on %s (amp %s, seed %d): %d epochs x %d steps, objective %r", dev, amp_name, seed, epochs,
                steps_per_epoch, objective)
    ctx = EpochContext(epochs=epochs, steps_per_epoch=steps_per_epoch, device=dev, amp_dtype=amp_dtype)
    show_bar = bool(progress) and sys.stderr.isatty()
    for epoch in range(start_epoch, epochs):
        _seed_epoch(seed, epoch)
        _prepare_loader(train_loader, seed, epoch)
        ctx.epoch = epoch
        ctx.metrics = {}
        model.train()
        objective.on_epoch_start(model, ctx)
        n_seen, loss_sum, correct, n_scored = 0, 0.0, torch.zeros((), dtype=torch.long, device=dev), 0
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not show_bar, leave=False,
                   file=sys.stderr, dynamic_ncols=True)
        try:
            for i, batch in enumerate(train_loader):
                x, y = batch[0], batch[1]
                if augment is not None:
                    x = augment(x, seed=derive_seed(seed, STREAM_AUGMENT, epoch, i)) if isinstance(
                        augment, Augment) else augment(x)
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                step = epoch * steps_per_epoch + i
                if schedule is not None:
                    schedule.set(step)
                ctx.batch, ctx.step, ctx.index = i, step, batch_index(batch)
                ctx.lr = float(optimizer.param_groups[0]["lr"])
                ctx.eps_fraction = eps_schedule.fraction(step, steps_per_epoch) if eps_schedule else 1.0
                value, logits = train_step(model, x, y, objective, optimizer, ctx, scaler=scaler,
                                           amp_dtype=amp_dtype, clip_grad_norm=clip_grad_norm)
                if ema is not None:
                    ema.update(model)
                b = len(y)
                n_seen += b
                loss_sum += value * b
                if logits is not None:
                    correct += (logits.argmax(1) == y).sum()
                    n_scored += b
                if (i + 1) % max(int(log_every), 1) == 0 or i + 1 == steps_per_epoch:
                    rate = n_seen / max(time.perf_counter() - t0, 1e-9)
                    acc = float(correct) / n_scored if n_scored else float("nan")
                    bar.set_postfix(loss=f"{loss_sum / n_seen:.4f}", acc=f"{acc:.3f}", img_s=f"{rate:.0f}")
                    if not show_bar:
                        logger.info("epoch %d batch %d/%d loss %.4f acc %.4f %.0f img/s", epoch, i + 1,
                                    steps_per_epoch, loss_sum / n_seen, acc, rate)
                bar.update(1)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        objective.on_epoch_end(model, ctx)
        eps = objective.eps
        record = {"epoch": epoch, "loss": loss_sum / max(n_seen, 1),
                  "acc": float(correct) / n_scored if n_scored else float("nan"),
                  "images_per_s": n_seen / max(elapsed, 1e-9), "lr": ctx.lr,
                  "eps": None if eps is None else eps * ctx.eps_fraction, "time_s": elapsed, **ctx.pop_metrics()}
        eval_model = ema.module if ema is not None else model
        if val_loader is not None:
            v = evaluate(eval_model, val_loader, dev, amp_dtype)
            record.update(val_loss=v["loss"], val_acc=v["acc"])
        history.append(record)
        save_checkpoint(ckpt_path, {
            "epoch": epoch + 1, "epochs": epochs, "steps_per_epoch": steps_per_epoch, "seed": seed,
            "device": str(dev), "amp": amp_name, "torch_version": str(torch.__version__),
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict() if schedule is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "objective": objective.state_dict(), "objective_repr": repr(objective), "rng": rng_state(),
            "history": history})
        logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                    ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        for cb in callbacks:
            cb(epoch, record)

    eval_model = ema.module if ema is not None else model
    with_ema = ema is not None
    save_checkpoint(final_path, {
        "epoch": epochs, "seed": seed, "device": str(dev), "amp": amp_name, "ema": with_ema,
        "model": eval_model.state_dict(), "raw_model": model.state_dict() if with_ema else None,
        "history": history})
    return TrainResult(history=history, model=model, ema=ema, seed=seed, device=str(dev), amp=amp_name,
                       checkpoint=ckpt_path, final=final_path, resumed_from=resumed_from)


def _restore(state, path, *, seed, steps_per_epoch, epochs, model, optimizer, schedule, ema, scaler, objective,
             amp_name=None):
    delete = f"Delete {path} to restart from scratch."
    if int(state.get("seed", -1)) != seed:
        raise CheckpointError(f"{path} was written by a run with seed {state.get('seed')}, this run has seed {seed}; "
                              f"rerun with that seed to resume. {delete}")
    if int(state.get("steps_per_epoch", -1)) != steps_per_epoch:
        raise CheckpointError(f"{path} was written with {state.get('steps_per_epoch')} steps per epoch, this loader "
                              f"has {steps_per_epoch} (different data or batch size). {delete}")
    if int(state.get("epochs", epochs)) != epochs:
        logger.warning("%s was written for %s epochs, continuing to %d (the lr schedule changes)", path,
                       state.get("epochs"), epochs)
    if "amp" in state and state["amp"] != amp_name:
        logger.warning("%s was written with mixed precision %s, this run uses %s: the resumed run will not match "
                       "an uninterrupted one", path, state["amp"], amp_name)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None and state.get("schedule") is not None:
            schedule.load_state_dict(state["schedule"])
        if ema is not None:
            if state.get("ema") is None:
                raise KeyError("the checkpoint has no EMA state but this run uses EMA")
            ema.load_state_dict(state["ema"])
        if scaler is not None:
            if state.get("scaler") is not None:
                scaler.load_state_dict(state["scaler"])  # loss scale and growth tracker of the interrupted run
            else:
                logger.warning("%s has no GradScaler state: fp16 loss scaling starts afresh", path)
        objective.load_state_dict(state.get("objective") or {})
        set_rng_state(state["rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path} does not fit this run's model/optimizer/settings ({e}). {delete}") from e


__all__ = ["CHECKPOINT", "FINAL", "FORMAT", "IndexedDataset", "IndexedSample", "NonFiniteLossError", "TrainResult",
           "batch_index", "evaluate", "fit", "resolve_amp", "resolve_device", "seed_everything", "train_step"]
