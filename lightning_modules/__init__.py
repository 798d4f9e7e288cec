"""LightningModules of the project: MEAL V2 distillation and the plain supervised Classifier."""

from lightning_modules.classifier import Classifier
from lightning_modules.meal_v2 import MealV2
from models.loading import ModelSource

__all__ = ["Classifier", "MealV2", "ModelSource"]
