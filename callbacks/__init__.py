"""Trainer callbacks: progress lines, agreement with the ensemble, memory format, exported students, loss guard, reproducible resume, SIGTERM on every rank, soft-label cache, predictions, results in HParams, the run's config.yaml."""

from callbacks.channels_last import ChannelsLast
from callbacks.ensemble_agreement import EnsembleAgreement
from callbacks.epoch_line import EpochLine
from callbacks.export_student import ExportStudent
from callbacks.fast_teachers import FastTeachers
from callbacks.finite_loss import FiniteLossGuard, NonFiniteTrainingError
from callbacks.hparams_results import HParamsWithResults
from callbacks.last_checkpoint import LastCheckpoint
from callbacks.prediction_writer import ClassPredictionWriter
from callbacks.rng_state import RestoreRandomState
from callbacks.save_config import SaveConfigOnceTrainingStarts
from callbacks.sigterm_every_rank import SigtermOnEveryRank
from callbacks.soft_label_writer import SoftLabelWriter

__all__ = [
    "ChannelsLast",
    "ClassPredictionWriter",
    "EnsembleAgreement",
    "EpochLine",
    "ExportStudent",
    "FastTeachers",
    "FiniteLossGuard",
    "HParamsWithResults",
    "LastCheckpoint",
    "NonFiniteTrainingError",
    "RestoreRandomState",
    "SaveConfigOnceTrainingStarts",
    "SigtermOnEveryRank",
    "SoftLabelWriter",
]
