"""ImageNet-style data: an ImageFolder root with ``train/`` and ``val/``, and the method's transforms."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2

from datamodules.base import ClassificationDataModule, DataError
from datamodules.files import IMAGE_EXTENSIONS, load_rgb
from datamodules.soft_labels import SoftLabelCache, crop_and_flip
from errors import ConfigError, require_fraction, require_positive

CHECK_ALL_UP_TO = 20_000  # image folders this small are decoded once before training (check_images: null)


class ImageFolderData(ClassificationDataModule):
    """ImageNet or your own images: ``data_dir/{train,val}/<class>/<image>``.

    Train: RandomResizedCrop(image_size, scale, ratio) + horizontal flip, as one box and one flag per
    crop so the soft-label cache can store and replay it exactly; eval: Resize(image_size / crop_pct) +
    CenterCrop(image_size) (crop_pct 0.875 = the paper's 256 -> 224). Both normalized with mean/std.
    ``test_split`` names a folder of held-out images for ``test`` (none: ``test`` refuses); ``train_subset``
    keeps a fixed random subset of the training images (``subset_seed``) for short runs; ``num_workers: null``
    uses the machine's cores (up to 8). Images are found in class folders and their sub-folders (as torchvision's
    ImageFolder does; GIFs as their first frame); ``check_images`` decodes every image once before training so a
    corrupt or truncated file stops the run before it starts (null: when the splits hold at most 20,000 images).
    """

    def __init__(
        self,
        data_dir: str,
        image_size: int = 224,
        crop_pct: float = 0.875,
        interpolation: str = "bilinear",
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        batch_size: int = 64,
        num_workers: Optional[int] = None,
        train_subset: Optional[int] = None,
        subset_seed: int = 0,
        train_split: str = "train",
        val_split: str = "val",
        test_split: Optional[str] = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        soft_labels: Optional[SoftLabelCache] = None,
        predict_files: Optional[list[str]] = None,
        check_images: Optional[bool] = None,
    ):
        super().__init__(batch_size, num_workers, soft_labels, predict_files)
        require_positive(image_size=image_size, crop_pct=crop_pct, train_subset=train_subset, ratio_low=ratio[0])
        require_fraction(crop_pct=crop_pct, scale_low=scale[0], scale_high=scale[1])
        if scale[0] > scale[1] or ratio[0] > ratio[1] or scale[1] == 0:
            raise ConfigError(f"scale {tuple(scale)} and ratio {tuple(ratio)} must each be (low, high), low <= high.")
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.interpolation_mode = InterpolationMode(interpolation)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self._mean, self._std = tuple(mean), tuple(std)
        self.train_subset, self.subset_seed = train_subset, subset_seed
        self.check_images = check_images
        self.splits = (train_split, val_split, test_split)
        self.classes = self._scan_classes()

    @property
    def val_is_test(self) -> bool:
        return self.splits[2] == self.splits[1]

    def _scan_classes(self) -> list[str]:
        if not self.data_dir.is_dir():
            raise DataError(
                f"Data folder '{self.data_dir}' does not exist: set data.data_dir to your ImageFolder root."
            )
        reference: Optional[list[str]] = None
        for split in dict.fromkeys(s for s in self.splits if s is not None):
            folder = self.data_dir / split
            if not folder.is_dir():
                raise DataError(f"Missing split folder '{folder}': expected {self.data_dir}/{split}/<class>/<image>.")
            classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
            if not classes:
                raise DataError(f"Split folder '{folder}' has no class sub-folders: expected {folder}/<class>/<image>.")
            if reference is not None and classes != reference:
                raise DataError(
                    f"Class folders of '{folder}' differ from '{self.data_dir / self.splits[0]}': both splits need the same classes."
                )
            reference = classes
        return reference

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def sample_box(self, generator: Optional[torch.Generator], height: int, width: int) -> tuple[int, int, int, int]:
        return random_resized_box(generator, height, width, self.scale, self.ratio)

    def crop_settings(self) -> dict:
        return {
            "image_size": self.image_size,
            "scale": list(self.scale),
            "ratio": list(self.ratio),
            "interpolation": self.interpolation,
            "flip": True,
        }

    def file_transform(self):
        return self._eval_transform()

    def _eval_transform(self):
        return eval_transform(self.image_size, self.interpolation, self._mean, self._std, self.crop_pct)

    def _dataset(self, split: str, transform) -> ImageFolder:
        folder = self.data_dir / split
        images = ImageFilter()  # one walk of the folder: ImageFolder's, which also notes the files it passes over
        dataset = ImageFolder(str(folder), transform=transform, loader=load_rgb, is_valid_file=images, allow_empty=True)
        empty = [c for index, c in enumerate(dataset.classes) if index not in set(dataset.targets)]
        if empty:
            raise DataError(
                f"Class folder '{folder / empty[0]}' has no images, in it or its sub-folders ({len(empty)} such folders; "
                f"images are {', '.join(IMAGE_EXTENSIONS)}): add images or remove it."
            )
        dataset.samples = dataset.imgs = SampleTable.of(dataset.samples)
        dataset.targets = dataset.samples.targets
        if images.repeated:
            rank_zero_warn(f"'{folder}': {images.repeated} image files reached again through links are counted once.")
        if images.skipped:
            kinds = sorted({Path(p).suffix.lower() or "(no extension)" for p in images.skipped})
            rank_zero_warn(
                f"'{folder}': {len(images.skipped)} files are not images this project reads and are skipped "
                f"({', '.join(kinds)}; e.g. '{images.skipped[0]}'); images are {', '.join(IMAGE_EXTENSIONS)}."
            )
        return dataset

    def build_datasets(self):
        train_split, val_split, test_split = self.splits
        self._finish = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(self._mean, self._std)])
        val = self._dataset(val_split, self._eval_transform())
        test = (
            None
            if test_split is None
            else val
            if test_split == val_split
            else self._dataset(test_split, self._eval_transform())
        )
        crop = RandomResizedCropAndFlip(self.scale, self.ratio, self.image_size, self.interpolation_mode, self._finish)
        train = self._dataset(train_split, v2.Compose([v2.PILToTensor(), crop]))
        if self.train_subset is not None and self.train_subset < len(train.samples):
            order = torch.randperm(len(train.samples), generator=torch.Generator().manual_seed(self.subset_seed))
            keep = sorted(order[: self.train_subset].tolist())
            train.samples = train.imgs = train.samples.subset(keep)
            train.targets = train.samples.targets
        self._raw_train = copy.copy(train)  # the same file list (listed once), decoded without augmentation
        self._raw_train.transform = v2.PILToTensor()
        self._check_images([train, val] + ([test] if test is not None and test is not val else []))
        return train, val, test

    def _check_images(self, datasets: list[ImageFolder]) -> None:
        """Decode every image once (in loader workers) so a corrupt one stops the run before training, named."""
        paths = [path for dataset in datasets for path, _ in dataset.samples]
        if self.check_images is False or (self.check_images is None and len(paths) > CHECK_ALL_UP_TO):
            return
        if len(paths) > 2000:
            rank_zero_info(f"Checking that all {len(paths)} images decode (data.init_args.check_images false skips it)")
        loader = DataLoader(_Decode(paths), batch_size=64, num_workers=self.num_workers, collate_fn=list)
        bad = [problem for batch in loader for problem in batch if problem is not None]
        if bad:
            raise DataError(f"{len(bad)} of {len(paths)} images cannot be read; the first: {bad[0]}")


def random_resized_box(
    generator: Optional[torch.Generator],
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box (top, left, height, width): torchvision's algorithm, drawn from ``generator``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(()).uniform_(*scale, generator=generator))
        aspect = math.exp(float(torch.empty(()).uniform_(*log_ratio, generator=generator)))
        w, h = round(math.sqrt(target_area * aspect)), round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height  # fallback: the central crop within the allowed aspect ratios
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class SampleTable(Sequence):
    """An ImageFolder's (path, class) pairs in two NumPy arrays. Forked loader workers that read a list of tuples
    touch each object's reference count and so copy its memory page: on an ImageNet-sized folder every worker grew
    by 390 MB over an epoch (benchmarks/large_folder.py). Arrays hold no object per sample."""

    def __init__(self, paths: np.ndarray, targets: np.ndarray):
        self.paths, self.targets = paths, targets

    @classmethod
    def of(cls, samples: Sequence[tuple[str, int]]) -> "SampleTable":
        paths = np.array([os.fsencode(path) for path, _ in samples], dtype=np.bytes_)
        return cls(paths, np.array([target for _, target in samples], dtype=np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return os.fsdecode(self.paths[index]), int(self.targets[index])

    def subset(self, keep: list[int]) -> "SampleTable":
        return SampleTable(self.paths[keep], self.targets[keep])


class ImageFilter:
    """ImageFolder's ``is_valid_file``: admits each image file once (a file reached again through a link, or a hard
    link of one, is not a second sample) and notes every other (not hidden) file it sees."""

    def __init__(self):
        self.skipped: list[str] = []
        self.seen: set[tuple[int, int]] = set()
        self.repeated = 0

    def __call__(self, path: str) -> bool:
        if path.lower().endswith(IMAGE_EXTENSIONS):
            info = os.stat(path)
            if (info.st_dev, info.st_ino) in self.seen:
                self.repeated += 1
                return False
            self.seen.add((info.st_dev, info.st_ino))
            return True
        if not Path(path).name.startswith("."):
            self.skipped.append(path)
        return False


class _Decode(Dataset):
    """Each item: None when the image decodes, else the one-line reason (with the file's name)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Optional[str]:
        try:
            load_rgb(self.paths[index])
        except DataError as error:
            return str(error)
        return None


class RandomResizedCropAndFlip:
    """The online training crop: a random box and flip, rendered exactly as the soft-label cache replays them."""

    def __init__(self, scale, ratio, size: int, interpolation: InterpolationMode, finish):
        self.scale, self.ratio, self.size, self.interpolation, self.finish = scale, ratio, size, interpolation, finish

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        box = random_resized_box(None, *image.shape[-2:], self.scale, self.ratio)
        return self.finish(crop_and_flip(image, box, bool(torch.rand(()) < 0.5), self.size, self.interpolation))


def eval_transform(size: int, interpolation: str, mean, std, crop_pct: float):
    """timm's evaluation transform: shorter side to size / crop_pct, centre crop, scale to [0, 1], normalize."""
    return create_transform(
        input_size=size, is_training=False, interpolation=interpolation, mean=mean, std=std, crop_pct=crop_pct
    )
