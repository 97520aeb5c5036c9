"""LightningDataModules: synthetic sequence tasks and character corpora, all local."""

from .chars import CharDataModule
from .synthetic import SyntheticSequenceDataModule
from .tagging import TaggingDataModule

__all__ = ["SyntheticSequenceDataModule", "TaggingDataModule", "CharDataModule"]
