"""Shared DataModule plumbing: loaders, and the facts the CLI links into the model."""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Optional

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class DataError(ValueError):
    """The data on disk cannot be used as configured."""


def global_seed() -> int:
    """The seed given to ``seed_everything`` (LightningCLI's ``seed_everything``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochShuffle(Sampler[int]):
    """Random order that is a pure function of (seed, epoch).

    Unlike RandomSampler it does not depend on the global RNG's history, so a run resumed at
    epoch e visits the data in the same order as an uninterrupted run. ``generator`` (reseeded with
    the order) also drives the DataLoader's worker seeds.
    """

    def __init__(self, length: int, seed: int, epoch: int = 0):
        self.length = length
        self.seed = seed
        self.generator = torch.Generator()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
        return iter(order.tolist())

    def __len__(self) -> int:
        return self.length


class ClassificationDataModule(L.LightningDataModule):
    """Train / val / test loaders over (image, label) datasets built by subclasses in ``setup``.

    Subclasses define ``num_classes``, ``in_chans``, ``mean``, ``std`` and ``image_size`` (linked into
    the model by the CLI) and ``build_datasets()``. ``batch_size`` is per device: the global batch is
    ``batch_size x devices x num_nodes``.
    """

    image_size: Optional[int] = None

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

    def train_dataloader(self) -> DataLoader:
        # Lightning creates the first iterator before calling set_epoch, so start at the trainer's epoch.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        sampler = EpochShuffle(len(self.train_set), global_seed(), epoch)
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            sampler=sampler,
            generator=sampler.generator,
            drop_last=True,
            num_workers=self.num_workers,
            persistent_workers=False,  # workers re-seeded from (seed, epoch) every epoch
            pin_memory=torch.cuda.is_available(),
        )

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(global_seed()),  # leaves the global RNG untouched
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)
