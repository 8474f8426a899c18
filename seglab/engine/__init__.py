"""Training, evaluation, checkpoints and reports."""

from seglab.engine.evaluate import evaluate
from seglab.engine.trainer import train

__all__ = ["evaluate", "train"]
