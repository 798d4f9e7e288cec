"""Shared DataModule plumbing: loaders, and the facts the CLI links into the model."""

from __future__ import annotations

import copy
import functools
import os
import signal
from collections.abc import Callable, Iterator
from typing import Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, DistributedSampler, get_worker_info
from torchvision.transforms import InterpolationMode, v2

from datamodules.files import ImageFiles, list_image_files
from datamodules.soft_labels import (
    SEED_STRIDE,
    CachedCrops,
    CropsToCache,
    SoftLabelCache,
    SoftLabelStore,
    concat_crops,
    crop_and_flip,
    fingerprint,
)
from errors import DataError


def machine_workers() -> int:
    """Loader workers for ``num_workers: null``: the CPU cores this process may use, up to 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


def global_seed() -> int:
    """The seed given to ``seed_everything`` (LightningCLI's ``seed_everything``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochShuffle(DistributedSampler):
    """Random order that is a pure function of (seed, epoch), sharded over ranks.

    Unlike RandomSampler it does not depend on the global RNG's history, so a run resumed at
    epoch e visits the data in the same order as an uninterrupted run. Rank r of n takes every
    n-th index of the one global order, so n processes with batch B see exactly the batches one
    process sees with batch n x B (Lightning leaves a DistributedSampler as it is). ``generator``
    (reseeded with the order) also drives the DataLoader's worker seeds. With ``crops`` R > 1 it
    yields virtual indices ``i * R + r`` of a cached-crop dataset, image i starting at crop (epoch * m + i + o_i) % R
    when each sample takes m consecutive crops (so the m crops of successive epochs do not repeat while m * epochs <= R);
    the offsets o_i are 0 for seed 0 and drawn per image from any other seed, so seeds differ in crop order too.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        epoch: int = 0,
        crops: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        per_sample: int = 1,
    ):
        super().__init__(range(length), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.crops, self.per_sample = crops, per_sample
        draw = torch.Generator().manual_seed(seed * SEED_STRIDE - 1) if crops > 1 and seed else None
        self.offsets = torch.randint(crops, (length,), generator=draw) if draw is not None else None
        self.start = 0  # this rank's samples of the epoch already trained on (set by ResumableLoader)
        self.generator = torch.Generator()
        self.set_epoch(epoch)

    def _epoch_seed(self) -> int:
        return self.seed * SEED_STRIDE + self.epoch

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.generator.manual_seed(self._epoch_seed())

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self._epoch_seed()))
        if self.crops > 1:
            first = order + self.epoch * self.per_sample + (self.offsets[order] if self.offsets is not None else 0)
            order = order * self.crops + first % self.crops
        order = order.tolist()
        order += order[: self.total_size - len(order)]  # equal shares: wrap around like DistributedSampler
        return iter(order[self.rank : self.total_size : self.num_replicas][self.start :])


class ResumableLoader(DataLoader):
    """The training DataLoader that knows its place in the epoch.

    Lightning stores ``state_dict()`` in every checkpoint and hands it back before the resumed epoch
    starts, so a run resumed mid-epoch trains on the batches the interrupted run had not reached, in
    the same order. ``len()`` stays the whole epoch's: Lightning counts the restored batches in it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = 0
        self._resume: Optional[tuple[int, int]] = None  # (epoch, batches done) from a checkpoint

    def __iter__(self):
        epoch, done = self._resume or (self.sampler.epoch, 0)
        self._resume = None
        self.batches_done = done if epoch == self.sampler.epoch else 0
        self.sampler.start = self.batches_done * self.batch_size
        return self._counted(super().__iter__())

    def _counted(self, batches):
        for batch in batches:
            self.batches_done += 1  # before the step, as Lightning saves a step's checkpoint after it
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = (int(state["epoch"]), int(state["batches_done"]))


class SeededPerSample(Dataset):
    """In DataLoader workers, draws each sample's augmentation from a seed of (epoch's loader seed, index),
    so the crops do not depend on which worker got the sample (a resumed epoch hands out batches anew).
    In the main process (``num_workers: 0``) the global RNG is left alone: checkpoints restore it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: list[int]) -> list:
        """In the main process, the dataset's own batch fetch (the same draws from the global RNG, in order)."""
        fetch = getattr(self.dataset, "__getitems__", None)
        if get_worker_info() is None and fetch is not None:
            return fetch(indices)
        return [self[index] for index in indices]

    def __getitem__(self, index: int):
        worker = get_worker_info()
        if worker is not None:
            seed = ((worker.seed - worker.id) * SEED_STRIDE + index) % 2**63
            torch.default_generator.manual_seed(seed)
        return self.dataset[index]


class ClassificationDataModule(L.LightningDataModule):
    """Train / val / test loaders over (image, label) datasets built by subclasses in ``setup``.

    Subclasses define ``num_classes``, ``in_chans``, ``mean`` and ``std`` (linked into the model by
    the CLI), ``image_size`` (recorded in exported students) and ``build_datasets()``. ``batch_size`` is per device: the global batch is
    ``batch_size x devices x num_nodes``.
    """

    image_size: Optional[int] = None
    crop_padding: int = 0  # the pad-and-crop augmentation, replayed by the soft-label cache
    interpolation_mode: InterpolationMode = InterpolationMode.BILINEAR  # resize of crops that are not image_size

    def __init__(
        self,
        batch_size: int,
        num_workers: Optional[int],
        soft_labels: Optional[SoftLabelCache] = None,
        predict_files: Optional[list[str]] = None,
    ):
        super().__init__()
        num_workers = machine_workers() if num_workers is None else num_workers
        if batch_size < 1 or num_workers < 0:
            raise DataError(f"data.batch_size must be >= 1 and num_workers >= 0, got {batch_size} and {num_workers}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.soft_labels = soft_labels
        self.predict_files = predict_files
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        self.soft_label_store: Optional[SoftLabelStore] = None
        # set by build_datasets() of data modules that support the soft-label cache
        self._raw_train: Optional[Dataset] = None
        self._finish: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._pending: Optional[np.ndarray] = None  # images predict still has to write (listed in setup)
        self._cache_images: Optional[Dataset] = None  # set by split_off_val: all training images, before the split
        self._cache_rows: Optional[torch.Tensor] = None

    _in_chans: int = 3
    _mean: tuple[float, ...]  # set by subclasses
    _std: tuple[float, ...]

    @property
    def in_chans(self) -> int:
        return self._in_chans

    @property
    def class_names(self) -> list[str]:
        """Names of the classes in label order (exported with the model, used by predictions)."""
        return [str(label) for label in range(self.num_classes)]

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    def build_datasets(self) -> tuple[Dataset, Dataset, Optional[Dataset]]:
        """Return (train, val, test) datasets (test None where the data has no test split)."""
        raise NotImplementedError

    val_size: int = 0  # training images held out for validation (data sets whose own split is train/test)
    val_seed: int = 0

    @property
    def val_is_test(self) -> bool:
        """Validation runs on the test images (no held-out split): nothing may be selected on it."""
        return self.val_size == 0

    def _check_val_size(self, val_size: int) -> None:
        if val_size < 0:
            raise DataError(f"data.val_size must be >= 0 (training images held out for validation), got {val_size}.")

    def split_off_val(self, train: Dataset, unaugmented: Dataset, raw: Dataset) -> tuple[Dataset, Dataset, Dataset]:
        """``val_size`` training images (a ``val_seed`` permutation) become the validation set, seen without
        augmentation; the rest stay training images. Returns (train, val, raw train), each in file order."""
        if self.val_size >= len(train):
            raise DataError(
                f"data.val_size is {self.val_size} but there are only {len(train)} training images: hold out fewer."
            )
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.val_seed))
        held, kept = order[: self.val_size].sort().values, order[self.val_size :].sort().values
        self._cache_images, self._cache_rows = raw, kept  # the cache covers them all; training reads its rows
        return take(train, kept), take(unaugmented, held), take(raw, kept)

    def raw_train_set(self) -> Dataset:
        """Training images before augmentation, as (uint8 tensor [C, H, W], label): for the soft-label cache."""
        if self._raw_train is None:
            raise DataError(
                f"{type(self).__name__} does not support the soft-label cache yet: use ImageFolderData, CIFARData or FashionMNISTData."
            )
        return self._raw_train

    def cache_images(self) -> tuple[Dataset, Optional[torch.Tensor]]:
        """What the soft-label cache is made of: every training image of the data's own split (held-out val images
        included, so one cache serves any ``val_size``), and the rows this run trains on (None: all)."""
        if self._cache_images is not None:
            return self._cache_images, self._cache_rows
        return self.raw_train_set(), None

    def finish(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 crop -> the model's input (dtype, channels, normalization)."""
        return self._finish(image)

    def render(
        self, image: torch.Tensor, box: tuple[int, int, int, int], flip: bool, size: Optional[int] = None
    ) -> torch.Tensor:
        """A training crop as the model sees it: box, resize to ``size`` (image_size), flip, normalize (online and cached alike)."""
        return self.finish(crop_and_flip(image, box, flip, size or self.image_size, self.interpolation_mode))

    def crop_settings(self) -> dict:
        """What decides a training crop besides its random box and flip (recorded in the soft-label cache's fingerprint)."""
        return {"image_size": self.image_size, "padding": self.crop_padding, "flip": True}

    def sample_box(self, generator: torch.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """A random crop box (top, left, height, width) as the training augmentation draws it."""
        pad = self.crop_padding
        top, left = (int(torch.randint(-pad, pad + 1, (), generator=generator)) for _ in range(2))
        return top, left, height, width

    def setup(self, stage: str) -> None:
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build_datasets()
        if stage == "test" and self.test_set is None:
            raise DataError(
                "The data has no test split (data.init_args.test_split is not set), and scoring the val images "
                "instead would report the images the best checkpoint was chosen on: put held-out images in a folder "
                "such as test/<class>/ and set data.init_args.test_split, or use validate for the val score."
            )

    @property
    def predict_mode(self) -> str:
        """What ``predict`` makes: ``files`` (class predictions for ``predict_files``) or ``soft_labels`` (the cache)."""
        if self.predict_files:
            return "files"
        if self.soft_labels is None:
            raise DataError(
                "predict classifies data.init_args.predict_files (images or folders), or writes MealV2's "
                "soft-label cache (data.init_args.soft_labels.dir): set one."
            )
        return "soft_labels"

    def open_soft_labels(self, stage: str, teachers: list[dict]) -> None:
        """Open the soft-label cache for these teachers (each one's name and weights digest, given by the model that
        owns them): ``fit`` trains on its crops (refusing a cache made for other images, teachers or crops), ``predict``
        creates or resumes it and lists the images still to write."""
        raw, rows = self.cache_images()
        fingerprint_now = fingerprint(raw, teachers, self.crop_settings())
        if stage == "predict":
            self._open_store_for_predict(raw, fingerprint_now)
        elif stage == "fit" and not isinstance(self.train_set, CachedCrops):
            self.soft_label_store = SoftLabelStore.open(self.soft_labels, len(raw), self.num_classes, fingerprint_now)
            crop = functools.partial(crop_and_flip, size=self.image_size, interpolation=self.interpolation_mode)
            self.train_set = CachedCrops(
                raw, self.soft_label_store, crop, self.soft_labels.crops_per_sample, rows, finish=self.finish
            )

    def _open_store_for_predict(self, raw: Dataset, fingerprint_now: dict) -> None:
        """Under DDP rank 0 creates (or checks) the cache folder first, and every rank lists the pending images
        before any rank writes, so all ranks split the same list (Lightning gives each rank its share)."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        first = strategy is None or strategy.is_global_zero
        args = (self.soft_labels, len(raw), self.num_classes, type(self).__name__, fingerprint_now)
        if first:
            self.soft_label_store = SoftLabelStore.create_or_resume(*args)
        if strategy is not None:
            strategy.barrier("soft_label_cache_created")
        if not first:
            self.soft_label_store = SoftLabelStore.create_or_resume(*args)
        self._pending = self.soft_label_store.pending(self.soft_labels.shard, self.soft_labels.num_shards)
        if strategy is not None:
            strategy.barrier("soft_label_cache_listed")

    def _require_open_cache(self) -> None:
        if self.soft_labels is not None and self.soft_label_store is None:
            raise DataError(
                "The soft-label cache belongs to a teacher ensemble: use data.init_args.soft_labels with model MealV2."
            )

    def file_transform(self) -> Callable:
        """A decoded image file (PIL) -> the model's input, as validation sees its images."""
        size = self.image_size
        return v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size), self.finish])

    def predict_dataloader(self) -> DataLoader:
        """``predict_files`` to classify; else the training images still missing from the soft-label cache."""
        if self.predict_mode == "files":
            files = list_image_files(self.predict_files)
            dataset = ImageFiles(files, "L" if self.in_chans == 1 else "RGB", self.file_transform())
            return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        self._require_open_cache()
        cache = self.soft_labels
        render = functools.partial(self.render, size=cache.teacher_image_size)  # the teachers' resolution, if their own
        dataset = CropsToCache(
            self.cache_images()[0],
            self._pending,
            cache.crops,
            global_seed(),
            self.sample_box,
            render,
            cache.mixup_alpha,
        )
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        self._require_open_cache()
        # Lightning creates the first iterator before calling set_epoch, so start at the trainer's epoch.
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        cached = isinstance(self.train_set, CachedCrops)
        crops, per_sample = (self.train_set.crops, self.train_set.per_sample) if cached else (1, 1)
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        images = len(self.train_set) // crops
        if images // world < self.batch_size:
            raise DataError(
                f"The training set has {images} images, {images // world} per device: fewer than one batch of "
                f"{self.batch_size} (incomplete batches are dropped): lower data.batch_size or use more training images."
            )
        per_device = -(-images // world)  # the sampler pads the last device's share with repeats
        if (left := per_device % self.batch_size) and epoch == 0:
            rank_zero_info(
                f"Each epoch trains {per_device - left} of the {per_device} training images per device: the last "
                f"incomplete batch ({left} images, other ones each epoch as the order is reshuffled) is dropped; a "
                f"data.batch_size that divides {per_device} trains on all of them."
            )
        sampler = EpochShuffle(
            images, global_seed(), epoch, crops, num_replicas=world, rank=rank, per_sample=per_sample
        )
        return ResumableLoader(
            self.train_set if cached else SeededPerSample(self.train_set),  # replayed crops draw nothing at random
            batch_size=self.batch_size,
            sampler=sampler,
            generator=sampler.generator,
            drop_last=True,
            collate_fn=concat_crops if per_sample > 1 else None,
            num_workers=self.num_workers,
            persistent_workers=False,  # workers re-seeded from (seed, epoch) every epoch
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=leave_interrupts_to_the_main_process,
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
            worker_init_fn=leave_interrupts_to_the_main_process,
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


def leave_interrupts_to_the_main_process(worker_id: int) -> None:
    """Ctrl+C reaches every process of the terminal's group: loader workers ignore it, so the main process can
    finish its step and save (cli.py) instead of losing its workers mid-batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def take(dataset: Dataset, indices: torch.Tensor) -> Dataset:
    """A copy of an in-memory dataset (``images`` and ``labels``) holding only ``indices``, in that order."""
    chosen = copy.copy(dataset)
    chosen.images = dataset.images[indices.numpy() if isinstance(dataset.images, np.ndarray) else indices]
    labels = dataset.labels
    chosen.labels = labels[indices] if torch.is_tensor(labels) else [labels[i] for i in indices.tolist()]
    return chosen
