"""LightningDataModules: a seeded validation split from the training set, the test split for test only."""

from .base import ClassificationDataModule
from .digits import DigitsDataModule

__all__ = ["ClassificationDataModule", "DigitsDataModule"]
