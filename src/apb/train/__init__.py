"""Training: compress a model while it learns, with exact resume and data parallelism.

>>> from apb.train import TrainConfig, train
>>> result = train(TrainConfig(model="mlp", dataset="digits", epochs=3, out_dir="runs/d"))
>>> result.final_test_acc, result.stats["fp_fraction"]

Under ``torchrun --nproc_per_node=N -m apb.train --config-json cfg.json`` the same call
trains data-parallel. Checkpoints (``last.pt``, ``best.pt``) load with ``weights_only=True``;
:func:`build_model_from_checkpoint` rebuilds the trained model from one.
"""

from .build import build_model, model_kwargs_for
from .checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    build_model_from_checkpoint,
    load_checkpoint,
    load_model_state,
    post_training_state,
    pruned_state,
    save_checkpoint,
)
from .config import TrainConfig
from .evaluation import evaluate, model_device, predict
from .metrics import jsonable, read_metrics
from .optim import build_optimizers, build_scheduler
from .seeding import seed_everything
from .step import train_step
from .trainer import TrainResult, train

__all__ = [
    "CHECKPOINT_VERSION", "CheckpointError", "TrainConfig", "TrainResult", "build_model",
    "build_model_from_checkpoint", "build_optimizers", "build_scheduler", "evaluate",
    "jsonable", "load_checkpoint", "load_model_state", "model_device", "model_kwargs_for", "post_training_state",
    "predict", "pruned_state", "read_metrics", "save_checkpoint", "seed_everything", "train",
    "train_step",
]
