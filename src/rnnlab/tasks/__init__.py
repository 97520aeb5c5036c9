"""LightningModules: one per task, each training any network of its kind."""

from .base import RNNTask
from .classification import ClassificationTask
from .language_model import LanguageModelTask
from .tagging import PAD_TAG, TaggingTask

__all__ = ["RNNTask", "ClassificationTask", "TaggingTask", "LanguageModelTask", "PAD_TAG"]
