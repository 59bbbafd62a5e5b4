"""The training engine: one loop (``loop.py``) over a group of students that share data and teacher.

``train(config)`` trains one model into its run folder; ``train_lockstep(configs)`` several students
with one data order and one teacher pass per batch. ``group_key(config)`` says which configs may
train together.
"""

from kdlab.engine.loop import Trainer, train, train_lockstep
from kdlab.engine.student import Student, group_key, lr_at, make_optimizer

__all__ = ["Student", "Trainer", "group_key", "lr_at", "make_optimizer", "train", "train_lockstep"]
