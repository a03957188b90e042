"""Distributed ambient fine-tuning: Ray Train workers running DeepSpeed with the ambient + consistency loss."""

from .config import FinetuneConfig
from .trainer import run_finetune

__all__ = ["FinetuneConfig", "run_finetune"]
