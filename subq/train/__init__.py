"""Training: typed configs, the trainer loop, checkpoints and DDP plumbing (``subq train``).

from subq.train import load_config, train
result = train(load_config("configs/mqar-attention.yaml", ["optim.lr=1e-3"]))
"""

from subq.train.checkpoint import (
    Checkpoint,
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from subq.train.config import (
    OptimConfig,
    TrainConfig,
    apply_override,
    dump_config,
    format_validation_error,
    load_config,
)
from subq.train.distributed import DistInfo, init_distributed
from subq.train.trainer import Trainer, TrainResult, example_accuracy, lm_loss, lr_at, train

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DistInfo",
    "OptimConfig",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "apply_override",
    "dump_config",
    "example_accuracy",
    "format_validation_error",
    "init_distributed",
    "latest_checkpoint",
    "list_checkpoints",
    "lm_loss",
    "load_checkpoint",
    "load_config",
    "lr_at",
    "save_checkpoint",
    "train",
]
