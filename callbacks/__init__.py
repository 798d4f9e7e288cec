"""Trainer callbacks: memory format, exported students, loss guard, reproducible resume, soft-label cache."""
from callbacks.channels_last import ChannelsLast
from callbacks.export_student import ExportStudent
from callbacks.fast_teachers import FastTeachers
from callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.rng_state import RestoreRandomState
from callbacks.soft_label_writer import SoftLabelWriter

__all__ = ["ChannelsLast", "ExportStudent", "FastTeachers", "FiniteLossGuard", "LastCheckpoint", "NonFiniteLossError", "RestoreRandomState", "SoftLabelWriter"]
