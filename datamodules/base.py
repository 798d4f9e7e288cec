"""Shared DataModule plumbing: loaders, and the facts the CLI links into the model."""
from __future__ import annotations

from typing import Optional

import lightning as L
from torch.utils.data import DataLoader, Dataset


class DataError(ValueError):
    """The data on disk cannot be used as configured."""


class ClassificationDataModule(L.LightningDataModule):
    """Train / val / test loaders over (image, label) datasets built by subclasses in ``setup``.

    Subclasses define ``num_classes``, ``in_chans``, ``mean`` and ``std`` (linked into the model by
    the CLI) and ``build_datasets()``. ``batch_size`` is per device (see README: global = per device x devices).
    """

    def __init__(self, batch_size: int, num_workers: int):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def build_datasets(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return (train, val, test) datasets."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build_datasets()

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=True,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)
