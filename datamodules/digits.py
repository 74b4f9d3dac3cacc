"""scikit-learn's handwritten digits (1,797 8x8 grayscale images, 10 classes): the embedded
default data set, shipped inside scikit-learn, so it needs no download."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset, Subset, TensorDataset

from .base import ClassificationDataModule

__all__ = ["DigitsDataModule"]


class DigitsDataModule(ClassificationDataModule):
    """Digits as ``(N, 1, 8, 8)`` float tensors standardized with the training pixels' mean/std.

    The data set has no official split: a seeded ``test_fraction`` is held out as test, and
    validation is carved from the rest. ``root`` is unused (the data ships with scikit-learn).
    """

    def __init__(
        self, root: str = "", test_fraction: float = 0.2, test_seed: int = 0, batch_size: int = 64, **kwargs
    ) -> None:
        super().__init__(root=root, batch_size=batch_size, **kwargs)
        self.test_fraction = test_fraction
        self.test_seed = test_seed
        self.num_classes = 10
        self.input_shape = [1, 8, 8]
        self.class_names = [str(d) for d in range(10)]

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.test_seed))
        n_test = round(self.test_fraction * len(labels))
        train_idx, test_idx = order[n_test:], order[:n_test]
        mean, std = images[train_idx].mean(), images[train_idx].std()
        data = TensorDataset((images - mean) / std, labels)
        train = Subset(data, train_idx.tolist())
        return train, train, Subset(data, test_idx.tolist())
