"""LightningDataModules: synthetic sequence tasks, character corpora, and a user's own files."""

from .chars import CharDataModule
from .conll import ConllDataModule
from .sequences import SequenceFileDataModule
from .synthetic import SyntheticSequenceDataModule
from .tagging import TaggingDataModule

__all__ = ["SyntheticSequenceDataModule", "TaggingDataModule", "CharDataModule", "SequenceFileDataModule",
           "ConllDataModule"]
