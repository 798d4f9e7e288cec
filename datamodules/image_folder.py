"""ImageNet-style data: an ImageFolder root with ``train/`` and ``val/``, and the method's transforms."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from datamodules.base import ClassificationDataModule, DataError


def load_rgb(path: str) -> Image.Image:
    """Decode one image as RGB; a corrupt or unreadable file stops with its name."""
    try:
        with open(path, "rb") as handle:
            return Image.open(handle).convert("RGB")
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"Cannot read image '{path}' ({err}): replace or remove the file.") from None


class ImageFolderData(ClassificationDataModule):
    """ImageNet or your own images: ``data_dir/{train,val}/<class>/<image>``.

    Train: RandomResizedCrop(image_size) + horizontal flip; eval: Resize(image_size / crop_pct) +
    CenterCrop(image_size) (crop_pct 0.875 = the paper's 256 -> 224). Both normalized with mean/std.
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
        num_workers: int = 8,
        train_split: str = "train",
        val_split: str = "val",
        test_split: Optional[str] = None,
    ):
        super().__init__(batch_size, num_workers)
        self.data_dir = Path(data_dir)
        self.image_size = image_size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self._mean, self._std = tuple(mean), tuple(std)
        self.splits = (train_split, val_split, test_split or val_split)
        self.classes = self._scan_classes()

    def _scan_classes(self) -> list[str]:
        if not self.data_dir.is_dir():
            raise DataError(f"Data folder '{self.data_dir}' does not exist: set data.data_dir to your ImageFolder root.")
        reference: Optional[list[str]] = None
        for split in dict.fromkeys(self.splits):
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
    def in_chans(self) -> int:
        return 3

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    def _transform(self, training: bool):
        return create_transform(
            input_size=self.image_size,
            is_training=training,
            color_jitter=None,
            interpolation=self.interpolation,
            mean=self._mean,
            std=self._std,
            crop_pct=self.crop_pct,
        )

    def _dataset(self, split: str, training: bool) -> ImageFolder:
        folder = self.data_dir / split
        empty = [c for c in self.classes if not any(p.suffix.lower() in IMG_EXTENSIONS for p in (folder / c).iterdir())]
        if empty:
            raise DataError(f"Class folder '{folder / empty[0]}' has no images ({len(empty)} such folders): add images or remove it.")
        return ImageFolder(str(folder), transform=self._transform(training), loader=load_rgb)

    def build_datasets(self):
        train_split, val_split, test_split = self.splits
        val = self._dataset(val_split, training=False)
        test = val if test_split == val_split else self._dataset(test_split, training=False)
        return self._dataset(train_split, training=True), val, test
