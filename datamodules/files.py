"""Image files to classify with ``predict``, and decoding any image file the way training saw its images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS as TORCHVISION_EXTENSIONS

from errors import DataError

IMAGE_EXTENSIONS = (*TORCHVISION_EXTENSIONS, ".gif")  # a GIF is read as its first frame


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grey images (PIL modes I;16* and I) scaled to 0-255: PIL's own convert("RGB") clips them at 255."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I"):
        return image
    values = np.asarray(image, dtype=np.float64) / 257.0  # 65535 -> 255
    return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Decode one image in ``mode`` (RGB or L; 16-bit images scaled to 8 bits); a corrupt file stops with its name."""
    try:
        with open(path, "rb") as handle:
            return to_8bit(Image.open(handle)).convert(mode)
    except Image.DecompressionBombError as err:  # PIL refuses images of more than 2 x MAX_IMAGE_PIXELS pixels
        raise DataError(
            f"Image '{path}' is too large to decode safely ({err}): shrink or remove it "
            "(or, for a file you trust, raise PIL.Image.MAX_IMAGE_PIXELS)."
        ) from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"Cannot read image '{path}' ({err}): replace or remove the file.") from None


def load_rgb(path: str) -> Image.Image:
    return load_image(path, "RGB")


def list_image_files(entries: Sequence[str]) -> list[Path]:
    """Files given, and the images under folders given (recursively, sorted); a missing entry or no image stops."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"data.init_args.predict_files: '{entry}' does not exist: give image files or folders.")
    if not files:
        raise DataError(
            f"data.init_args.predict_files {list(entries)} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    return files


class ImageFiles(Dataset):
    """Image files as the model's input (``transform`` of the decoded image) with their paths."""

    def __init__(self, files: list[Path], mode: str, transform: Callable):
        self.files, self.mode, self.transform = files, mode, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = str(self.files[index])
        return {"images": self.transform(load_image(path, self.mode)), "paths": path}
