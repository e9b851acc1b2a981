"""Training engine: one loop (:func:`fit`) for every paper, pluggable objectives, schedules, augmentation, EMA,
atomic per-epoch checkpoints with bit-identical resume (CPU), and a config builder (:func:`build_training`) so that
Snakemake rules only pass dicts.

Typical use from a rule script::

    training = build_training(cfg["training"])
    result = training.fit(model, training.loader(train_set), checkpoint_dir=out_dir, val_loader=val)
    # out_dir/final.pt holds the evaluation weights (EMA when enabled); result.eval_model is that model
"""

from .augment import Augment, AugmentedDataset, AutoAugment, CropFlip, Cutout, make_augment
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import Training, build_training, optimizer_spec
from .context import EpochContext, derive_seed
from .ema import EMA, make_ema
from .loop import (CHECKPOINT, FINAL, IndexedDataset, IndexedSample, NonFiniteLossError, TrainResult, batch_index,
                   evaluate, fit, resolve_amp, resolve_device, train_step)
from .objectives import (AWP, OBJECTIVES, PGDAT, TRADES, AdversarialObjective, CrossEntropy, GradNormPenalty, Hook,
                         Objective, make_objective, register_objective)
from .schedules import (EpsSchedule, LRSchedule, OptimizerSpec, ScheduleSpec, lr_factor, make_eps_schedule,
                        make_optimizer, schedule_spec)

__all__ = [
    "AWP", "Augment", "AugmentedDataset", "AutoAugment", "AdversarialObjective", "CHECKPOINT", "CheckpointError",
    "CropFlip", "CrossEntropy", "Cutout", "EMA", "EpochContext", "EpsSchedule", "FINAL", "GradNormPenalty", "Hook",
    "IndexedDataset", "IndexedSample",
    "LRSchedule", "NonFiniteLossError", "OBJECTIVES", "Objective", "OptimizerSpec", "PGDAT", "ScheduleSpec",
    "TRADES", "TrainResult", "Training", "batch_index", "build_training", "derive_seed", "evaluate", "fit", "load_checkpoint",
    "lr_factor", "make_augment", "make_ema", "make_eps_schedule", "make_objective", "make_optimizer",
    "optimizer_spec", "register_objective", "resolve_amp", "resolve_device", "save_checkpoint", "schedule_spec",
    "train_step",
]
