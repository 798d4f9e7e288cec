"""Trainer callbacks: memory format, exported students, loss guard, reproducible resume."""
from callbacks.channels_last import ChannelsLast
from callbacks.export_student import ExportStudent
from callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from callbacks.rng_state import RestoreRandomState

__all__ = ["ChannelsLast", "ExportStudent", "FiniteLossGuard", "NonFiniteLossError", "RestoreRandomState"]
