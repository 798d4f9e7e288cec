"""Soft-label cache (the FKD idea): the teacher ensemble's predictions on stored random crops.

Layout of a cache folder (numpy memory-maps, one row per training image):
    meta.json     images, crops per image, top_k, classes, the data module's name, and the fingerprint of
                  everything the labels depend on (which images, which teachers, crop settings, top_k)
    boxes.npy     float32 [N, R, 4]   crop box (top, left, height, width) relative to the image size
    flips.npy     uint8   [N, R]      horizontal flip applied after the crop
    values.npy    float16 [N, R, k]   the ensemble's k largest probabilities (mean of the teachers' softmax)
    logits.npy    float16 [N, R, k]   the mean of the teachers' logits at the same k classes (the discriminator's input)
    indices.npy   uint8/int16/int32 [N, R, k]  those classes
    crc.npy       uint32  [N]         CRC-32 of an image's rows, seeded by the cache's meta.json: checked on every read
    done.npy      uint8   [N]         1 once an image's crops are written (resume / shards)
  and, in a cache for consistent teaching (``mixup_alpha`` set: function matching, Beyer et al. 2022):
    partners.npy  int32   [N, R, 2]   the (image, stored crop) each crop is mixed with
    lambdas.npy   float32 [N, R]      the crop's weight in the mix, ~ Beta(alpha, alpha), drawn when the cache is made
  where the stored labels are the ensemble's on the mixed image, which training replays exactly.
With top_k = classes the replayed step is the online step on the same crop (up to fp16 storage). With
top_k < classes two things differ: the probability mass outside the top k is spread evenly over the
other classes ("marginal smoothing"), and the discriminator's teacher rows hold the mean logits of the
k stored classes with every other class set to the smallest stored one. A crop costs 17 bytes plus
k * (4 + index bytes), an image 5 more. Files are allocated in full when the cache is made, so a full disk is a
one-line error then, never a crash while writing; each replayed image is checked against its CRC and its
targets checked to be finite probabilities.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from errors import ConfigError, DataError, require_positive
from storage.atomic_files import atomic_write_text
from storage.run_folder import foreign_files

ROWS = ("boxes", "flips", "values", "logits", "indices")  # an image's stored crops
FILES = (*ROWS, "crc", "done")
MIX_ROWS = ("partners", "lambdas")  # beside ROWS in a cache for consistent teaching


def stored_rows(meta: dict) -> tuple[str, ...]:
    """The arrays that hold a cache's per-crop rows: ROWS, and MIX_ROWS where its crops are mixed."""
    return ROWS + (MIX_ROWS if meta.get("mixup_alpha") else ())


FORMAT = 3  # 2: mean teacher logits stored beside the probabilities; 3: a CRC per image
SEED_STRIDE = 1_000_003  # a prime: seed * SEED_STRIDE + i gives each (seed, epoch or image) its own stream
REMAKE = "delete the folder and make it again with `python cli.py predict`"


@dataclass
class SoftLabelCache:
    """Where the cache lives and how it is made.

    dir: the cache folder. crops: random crops stored per image. top_k: probabilities kept per crop.
    shard / num_shards: this process fills only images with index % num_shards == shard.
    crops_per_sample: training takes this many stored crops from each decoded image (FKD's num_crops):
        a batch of B images holds B x crops_per_sample crops, and decoding costs fall that many times.
    teacher_image_size: the teachers see each stored crop at this resolution when the cache is made (boxes
        are relative, so the student replays the same crop at its own size); None = the data's image_size.
    mixup_alpha: consistent teaching: each stored crop is mixed with a stored crop of another image, weight
        lambda ~ Beta(alpha, alpha) (1: uniform, as big_vision's function-matching configs draw it), and the
        teachers label the mixed image, which training replays; None: plain crops.
    """

    dir: str
    crops: int = 8
    top_k: int = 5
    shard: int = 0
    num_shards: int = 1
    crops_per_sample: int = 1
    teacher_image_size: Optional[int] = None
    mixup_alpha: Optional[float] = None

    def __post_init__(self):
        require_positive(crops=self.crops, top_k=self.top_k, num_shards=self.num_shards)
        require_positive(crops_per_sample=self.crops_per_sample, teacher_image_size=self.teacher_image_size)
        require_positive(mixup_alpha=self.mixup_alpha)
        if not 0 <= self.shard < self.num_shards:
            raise ConfigError(
                f"soft_labels.shard is {self.shard}: it must be 0 .. num_shards - 1 ({self.num_shards - 1})."
            )


class SoftLabelStore:
    """Memory-mapped arrays of a cache folder; ``create`` makes them, ``open`` reads or resumes."""

    def __init__(self, folder: Path, meta: dict, mode: str):
        self.folder = folder
        self.meta = meta
        self.rows = stored_rows(meta)
        self.arrays = {name: _load_array(folder / f"{name}.npy", mode) for name in (*self.rows, "crc", "done")}
        n, r, k = meta["images"], meta["crops"], meta["top_k"]
        expected = {"boxes": (n, r, 4), "flips": (n, r), "values": (n, r, k), "logits": (n, r, k), "indices": (n, r, k)}
        expected |= {"partners": (n, r, 2), "lambdas": (n, r)} if meta.get("mixup_alpha") else {}
        for name, shape in {**expected, "crc": (n,), "done": (n,)}.items():
            if self.arrays[name].shape != shape:
                raise DataError(
                    f"Soft-label cache '{folder}': {name}.npy has shape {self.arrays[name].shape}, meta.json says "
                    f"{shape}: the cache is damaged; {REMAKE}."
                )
        sealed = {k: meta.get(k) for k in SEALED} | (
            {"mixup_alpha": meta["mixup_alpha"]} if meta.get("mixup_alpha") else {}
        )
        self.seed = zlib.crc32(json.dumps(sealed, sort_keys=True).encode())
        self._uncommitted: list[np.ndarray] = []  # image indices written but not yet flushed and marked done

    @classmethod
    def create_or_resume(
        cls, config: SoftLabelCache, num_images: int, num_classes: int, source: str, fingerprint: dict
    ) -> "SoftLabelStore":
        folder = Path(config.dir)
        if not 1 <= config.top_k <= num_classes or config.crops < 1:
            raise DataError(
                f"soft_labels.top_k must be 1..{num_classes} (the classes) and crops >= 1, got {config.top_k} and {config.crops}."
            )
        meta = {
            "format": FORMAT,
            "images": num_images,
            "crops": config.crops,
            "top_k": config.top_k,
            "classes": num_classes,
            "source": source,
            "teacher_image_size": config.teacher_image_size,
            "fingerprint": fingerprint,
            **({"mixup_alpha": config.mixup_alpha} if config.mixup_alpha else {}),
        }
        if (folder / "meta.json").is_file():
            check_fingerprint(folder, _read_meta(folder), meta, "predict into another dir")
            _allocate(folder, [*stored_rows(meta), "crc", "done"])  # a resume after a full disk was freed
            return cls(folder, meta, "r+")
        folder.mkdir(parents=True, exist_ok=True)
        if theirs := foreign_files(folder, CACHE_MARKER):  # never a file this project did not write
            raise DataError(
                f"'{folder}' holds {theirs[0]} and is not a soft-label cache this project started (no {CACHE_MARKER}), "
                "so nothing there is touched: give soft_labels.dir an empty or new folder."
            )
        (folder / CACHE_MARKER).touch()
        n, r, k = num_images, config.crops, config.top_k
        index_dtype = np.uint8 if num_classes <= 2**8 else np.int16 if num_classes <= 2**15 else np.int32
        layout = (
            ("boxes", (n, r, 4), np.float32),
            ("flips", (n, r), np.uint8),
            ("values", (n, r, k), np.float16),
            ("logits", (n, r, k), np.float16),
            ("indices", (n, r, k), index_dtype),
            *((("partners", (n, r, 2), np.int32), ("lambdas", (n, r), np.float32)) if config.mixup_alpha else ()),
            ("crc", (n,), np.uint32),
            ("done", (n,), np.uint8),
        )
        needed = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for _, shape, dtype in layout)
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise DataError(
                f"Soft-label cache '{folder}' needs {needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free there: "
                "free space or choose another soft_labels.dir, then run the predict step again."
            )
        for name, shape, dtype in layout:
            try:
                np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape).flush()
            except OSError as error:
                raise _no_room(folder, name, error) from None
        _allocate(folder, [name for name, _, _ in layout])
        atomic_write_text(folder / "meta.json", json.dumps(meta))
        return cls(folder, meta, "r+")

    @classmethod
    def open(cls, config: SoftLabelCache, num_images: int, num_classes: int, fingerprint: dict) -> "SoftLabelStore":
        folder = Path(config.dir)
        if not (folder / "meta.json").is_file():
            raise DataError(
                f"No soft-label cache in '{folder}': make it first with `python cli.py predict` (see docs/speed.md)."
            )
        meta = _read_meta(folder)
        expected = {"format": FORMAT, "images": num_images, "classes": num_classes, "fingerprint": fingerprint}
        expected |= {"mixup_alpha": config.mixup_alpha}  # a plain run refuses a mixed cache, and the reverse
        check_fingerprint(
            folder,
            meta,
            {**meta, **expected},
            "re-create it for this data and these teachers with `python cli.py predict`",
        )
        store = cls(folder, meta, "r")
        missing = int((store.arrays["done"] == 0).sum())
        if missing:
            raise DataError(
                f"Soft-label cache '{folder}' is incomplete ({missing} images missing): run the predict step again to finish it."
            )
        return store

    def pending(self, shard: int = 0, num_shards: int = 1) -> np.ndarray:
        """Indices of this shard's images whose crops are not written yet."""
        done = np.asarray(self.arrays["done"])
        candidates = np.arange(shard, len(done), num_shards)
        return candidates[done[candidates] == 0]

    def write(self, image_indices: np.ndarray, **rows: np.ndarray) -> None:
        """Rows of boxes, flips, values, logits and indices for these images, and their CRCs; ``commit`` marks them done."""
        rows = {name: np.asarray(rows[name]).astype(self.arrays[name].dtype, copy=False) for name in self.rows}
        for name in self.rows:
            self.arrays[name][image_indices] = rows[name]
        self.arrays["crc"][image_indices] = [
            self.row_crc(int(index), {name: rows[name][j] for name in self.rows})
            for j, index in enumerate(image_indices)
        ]
        self._uncommitted.append(np.asarray(image_indices))

    def commit(self) -> int:
        """Flush the rows written since the last commit, then mark their images done (a run killed before this
        leaves them unmarked, to be made again). One flush per block of images, not per batch. Returns the count."""
        if not self._uncommitted:
            return 0
        for name in (*self.rows, "crc"):
            self.arrays[name].flush()
        written = np.concatenate(self._uncommitted)
        self.arrays["done"][written] = 1
        self.arrays["done"].flush()
        self._uncommitted = []
        return len(written)

    def row_crc(self, index: int, rows: dict[str, np.ndarray]) -> int:
        """CRC-32 of image ``index``'s rows, seeded by what the cache was made for (so rows of another cache fail)."""
        crc = zlib.crc32(index.to_bytes(8, "little"), self.seed)
        for name in self.rows:
            crc = zlib.crc32(np.ascontiguousarray(rows[name]).tobytes(), crc)
        return crc

    def checked_rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The stored rows of these images ([B, R, ...] each), refused in one line naming the first image that fails
        its CRC or whose targets are not finite probabilities. One read per array for the whole batch."""
        rows = {name: self.arrays[name][indices] for name in self.rows}  # fancy indexing copies out of the memory map
        stored_crcs = self.arrays["crc"][indices]
        for j, index in enumerate(indices.tolist()):
            if self.row_crc(index, {name: rows[name][j] for name in self.rows}) != int(stored_crcs[j]):
                self._refuse(index, "its rows fail their CRC (changed, zeroed or copied from another cache)")
        values = rows["values"].astype(np.float32)
        total = values.sum(-1)
        full = self.meta["top_k"] == self.meta["classes"]
        finite = np.isfinite(values).all(axis=(1, 2)) & np.isfinite(rows["logits"].astype(np.float32)).all(axis=(1, 2))
        if not finite.all():
            self._refuse(int(indices[np.argmin(finite)]), "its targets are not finite")
        wrong = (values < 0).any(axis=(1, 2)) | (total > 1.01).any(axis=1) | (full & (total < 0.99).any(axis=1))
        if wrong.any():
            first = int(np.argmax(wrong))
            sums = total[first]
            self._refuse(
                int(indices[first]), f"its targets are not probabilities (sums {sums.min():.3f}..{sums.max():.3f})"
            )
        return rows

    def _refuse(self, index: int, problem: str) -> None:
        raise DataError(f"Soft-label cache '{self.folder}': image {index}: {problem}; {REMAKE}.")

    def bytes_per_image(self) -> int:
        return sum(array[0].nbytes for array in self.arrays.values())


CACHE_MARKER = ".meal_v2_cache"  # written into a folder before a new cache's files: only such folders receive them
SEALED = ("format", "images", "crops", "top_k", "classes", "source", "teacher_image_size", "fingerprint")


def _allocate(folder: Path, names: list[str]) -> None:
    """Reserve every array's blocks now: a full disk is then this one-line error, not a SIGBUS while writing."""
    for name in names:
        path = folder / f"{name}.npy"
        try:
            with open(path, "r+b") as handle:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as error:
            raise _no_room(folder, name, error) from None


def _no_room(folder: Path, name: str, error: OSError) -> DataError:
    return DataError(
        f"Soft-label cache '{folder}': no room for {name}.npy ({error.strerror}): free space or choose another "
        "soft_labels.dir, then run the predict step again (it finishes the cache)."
    )


def _read_meta(folder: Path) -> dict:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as error:
        raise DataError(
            f"Soft-label cache '{folder}': meta.json cannot be read ({type(error).__name__}): the cache is damaged; "
            f"{REMAKE}."
        ) from None


def _load_array(path: Path, mode: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as error:
        reason = "missing" if not path.is_file() else f"unreadable or truncated ({type(error).__name__})"
        raise DataError(
            f"Soft-label cache '{path.parent}': {path.name} is {reason}: the cache is damaged; {REMAKE}."
        ) from None


PARTS = {  # meta / fingerprint key -> what the user is told differs
    "format": "cache format (made by an older version)",
    "images": "number of training images",
    "classes": "number of classes",
    "crops": "crops per image",
    "source": "data module",
    "data": "training images (data files or subset)",
    "teachers": "teachers (names or weights)",
    "crop": "crop settings",
    "top_k": "top_k",
    "teacher_image_size": "teacher resolution",
    "mixup_alpha": "mixing (mixup_alpha of consistent teaching)",
}


def check_fingerprint(folder: Path, stored: dict, expected: dict, fix: str) -> None:
    """Refuse, in one line naming the first part that differs, a cache made for other images, teachers, crops or top-k."""
    stored_parts = {**{k: v for k, v in stored.items() if k != "fingerprint"}, **stored.get("fingerprint", {})}
    expected_parts = {**{k: v for k, v in expected.items() if k != "fingerprint"}, **expected.get("fingerprint", {})}
    for key, label in PARTS.items():
        if stored_parts.get(key) != expected_parts.get(key):
            raise DataError(
                f"Soft-label cache '{folder}' was made for other {label} ({_short(stored_parts.get(key))} != "
                f"{_short(expected_parts.get(key))} now): {fix}."
            )


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def fingerprint(raw: Dataset, teachers: list[dict], crop: dict) -> dict:
    """What a cache's labels depend on besides crops and top-k (in meta.json): the training images, the teachers'
    identity (each one's name and weights digest, from the model that owns them: ``MealV2.teacher_identity``), crops."""
    return {"data": images_digest(raw), "teachers": [dict(t) for t in teachers], "crop": crop}


def images_digest(raw: Dataset) -> str:
    """sha256 of the training images and labels in order (so another subset or other files differ); for folders, of the file list."""
    digest = hashlib.sha256()
    if hasattr(raw, "samples") and hasattr(raw, "root"):  # an ImageFolder: its files (relative path, size) and labels
        for path, label in raw.samples:
            digest.update(f"{Path(path).relative_to(raw.root)}\t{Path(path).stat().st_size}\t{label}\n".encode())
        return digest.hexdigest()
    if not (hasattr(raw, "images") and hasattr(raw, "labels")):
        raise DataError(
            f"The soft-label cache cannot fingerprint a {type(raw).__name__}: use an ImageFolder, CIFAR or Fashion-MNIST."
        )
    digest.update(np.ascontiguousarray(np.asarray(raw.images)).tobytes())
    digest.update(np.asarray(raw.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def decode_soft_labels(values: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense probabilities: the stored top-k, the remaining mass spread evenly over the other classes."""
    values = values.float()
    rest = (1.0 - values.sum(dim=-1, keepdim=True)).clamp_min(0.0) / max(num_classes - values.shape[-1], 1)
    dense = rest.expand(*values.shape[:-1], num_classes).clone()
    return dense.scatter_(-1, indices.long(), values)


def decode_teacher_logits(logits: torch.Tensor, indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dense mean teacher logits: exact when every class is stored, else the tail set to the smallest stored logit."""
    logits = logits.float()
    if logits.shape[-1] == num_classes:
        return torch.empty_like(logits).scatter_(-1, indices.long(), logits)
    tail = logits.min(dim=-1, keepdim=True).values.expand(*logits.shape[:-1], num_classes).clone()
    return tail.scatter_(-1, indices.long(), logits)


def crop_and_flip(
    image: torch.Tensor,
    box: tuple[int, int, int, int],
    flip: bool,
    size: int,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
) -> torch.Tensor:
    """Apply a pixel box (top, left, height, width; may reach outside the image = zero padding), resize to size, flip."""
    top, left, height, width = box
    out = F.crop(image, top, left, height, width)
    if (height, width) != (size, size):
        out = F.resize(out, [size, size], interpolation=interpolation, antialias=True)
    return F.horizontal_flip(out) if flip else out


def relative_box(box: tuple[int, int, int, int], height: int, width: int) -> list[float]:
    top, left, h, w = box
    return [top / height, left / width, h / height, w / width]


def pixel_box(relative: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    top, left, h, w = (float(v) for v in relative)
    return round(top * height), round(left * width), round(h * height), round(w * width)


class CropsToCache(Dataset):
    """For each pending image: its R random crops (seeded by image index), rendered for the teachers; with
    ``mixup_alpha``, each mixed with a stored crop of another image (drawn from the same seed)."""

    def __init__(self, raw: Dataset, pending: np.ndarray, crops: int, seed: int, sample_box, render, mixup_alpha=None):
        self.raw, self.pending, self.crops, self.seed = raw, pending, crops, seed
        self.sample_box, self.render, self.mixup_alpha = sample_box, render, mixup_alpha

    def __len__(self) -> int:
        return len(self.pending)

    def stored_crops(self, index: int) -> tuple[torch.Tensor, list[tuple], list[bool]]:
        """Image ``index``, its R pixel boxes and flips: the same draws whichever image asks."""
        image, _ = self.raw[index]
        generator = torch.Generator().manual_seed(self.seed * SEED_STRIDE + index)
        boxes, flips = [], []
        for _ in range(self.crops):
            boxes.append(self.sample_box(generator, *image.shape[-2:]))
            flips.append(bool(torch.randint(0, 2, (), generator=generator)))
        return image, boxes, flips

    def __getitem__(self, position: int) -> dict:
        index = int(self.pending[position])
        image, boxes, flips = self.stored_crops(index)
        images = torch.stack([self.render(image, box, flip) for box, flip in zip(boxes, flips, strict=True)])
        item = {
            "index": index,
            "boxes": torch.tensor([relative_box(box, *image.shape[-2:]) for box in boxes]),
            "flips": torch.tensor(flips),
        }
        if self.mixup_alpha:
            draw = np.random.default_rng([self.seed, index])
            others = draw.integers(len(self.raw) - 1, size=self.crops)
            partners = np.stack([others + (others >= index), draw.integers(self.crops, size=self.crops)], axis=1)
            lambdas = draw.beta(self.mixup_alpha, self.mixup_alpha, size=self.crops).astype(np.float32)
            views = []
            for j, r in partners.tolist():
                other, other_boxes, other_flips = self.stored_crops(j)
                views.append(self.render(other, other_boxes[r], other_flips[r]))
            images = mix(images, torch.stack(views), torch.from_numpy(lambdas))
            item |= {"partners": torch.from_numpy(partners.astype(np.int32)), "lambdas": torch.from_numpy(lambdas)}
        return {**item, "images": images}


def mix(images: torch.Tensor, partners: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """lambda * image + (1 - lambda) * partner, per image (the model's inputs, normalized: mixing commutes with it)."""
    weight = lambdas.to(images.dtype).view(-1, *([1] * (images.dim() - 1)))
    return weight * images + (1 - weight) * partners


class CachedCrops(Dataset):
    """Training items replayed from the cache, for virtual index i * R + r: image i's stored crops r, r+1, ... (mod R).

    With ``per_sample`` m = 1 an item is (image, label, soft target, mean teacher logits); with m > 1 the m crops
    of one decoded image come stacked ([m, C, H, W], [m], [m, K], [m, K]) and ``concat_crops`` joins them into the batch.
    """

    def __init__(
        self,
        raw: Dataset,
        store: SoftLabelStore,
        render,
        per_sample: int = 1,
        rows: Optional[torch.Tensor] = None,
        finish=None,
    ):
        """``render(image, box, flip)``: a crop as the model sees it; or, with ``finish`` given, the uint8 crop, and
        ``finish`` converts the whole batch at once (per crop, the conversion costs more than the crop)."""
        self.raw, self.store, self.render, self.per_sample, self.finish = raw, store, render, per_sample, finish
        self.rows = rows.tolist() if rows is not None else None  # the images trained on (a held-out split: fewer)
        self.crops, self.classes = store.meta["crops"], store.meta["classes"]
        if not 1 <= per_sample <= self.crops:
            raise DataError(
                f"soft_labels.crops_per_sample must be 1..{self.crops} (the crops stored per image), got {per_sample}."
            )
        if rows is not None and "partners" in store.rows:
            raise DataError(
                f"Soft-label cache '{store.folder}' mixes crops of any training image, held-out ones included: train "
                "from it on all training images (data.init_args.val_size 0), or hold images out with a plain cache."
            )

    def __len__(self) -> int:
        return (len(self.rows) if self.rows is not None else len(self.raw)) * self.crops

    def __getitem__(self, virtual: int):
        return self.__getitems__([virtual])[0]

    def __getitems__(self, virtuals: list[int]) -> list:
        """A batch's items (the DataLoader's per-batch fetch): the labels of all its images read, checked and decoded
        at once; only the crops are rendered image by image."""
        images, first = np.divmod(np.asarray(virtuals, dtype=np.int64), self.crops)
        indices = np.asarray(self.rows, dtype=np.int64)[images] if self.rows is not None else images
        rows = self.store.checked_rows(indices)
        crops = (first[:, None] + np.arange(self.per_sample)) % self.crops  # [B, m]
        chosen = {name: rows[name][np.arange(len(indices))[:, None], crops] for name in self.store.rows}
        stored = {name: torch.from_numpy(chosen[name]) for name in ("values", "logits", "indices")}
        soft = decode_soft_labels(stored["values"], stored["indices"], self.classes)
        logits = decode_teacher_logits(stored["logits"], stored["indices"], self.classes)
        views, labels = self.views(np.repeat(indices, self.per_sample), chosen["boxes"], chosen["flips"])
        if "partners" in chosen:  # consistent teaching: the mixed image the teachers labelled, its larger part's label
            partners = chosen["partners"].reshape(-1, 2).astype(np.int64)
            theirs = self.store.checked_rows(partners[:, 0])
            picked = np.arange(len(partners)), partners[:, 1]
            other_views, other_labels = self.views(partners[:, 0], theirs["boxes"][picked], theirs["flips"][picked])
            lambdas = torch.from_numpy(chosen["lambdas"].reshape(-1))
            views = mix(views, other_views, lambdas)
            labels = torch.where(lambdas >= 0.5, labels, other_labels)
        items = []
        for j in range(len(indices)):
            if self.per_sample == 1:
                items.append((views[j], int(labels[j]), soft[j, 0], logits[j, 0]))
            else:
                mine = slice(j * self.per_sample, (j + 1) * self.per_sample)
                items.append((views[mine], labels[mine], soft[j], logits[j]))
        return items

    def views(self, images: np.ndarray, boxes: np.ndarray, flips: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop k of a batch: image ``images[k]`` at relative box ``boxes[k]`` with ``flips[k]``, as the model sees
        it, and its label (boxes and flips may come as [B, m, ...] for B x m crops)."""
        boxes, flips = boxes.reshape(len(images), 4), flips.reshape(len(images))
        views, labels = [], []
        for index, box, flip in zip(images.tolist(), boxes, flips, strict=True):
            image, label = self.raw[index]
            views.append(self.render(image, pixel_box(box, *image.shape[-2:]), bool(flip)))
            labels.append(label)
        views = torch.stack(views)
        return (self.finish(views) if self.finish is not None else views), torch.as_tensor(labels)


def concat_crops(items: list) -> list[torch.Tensor]:
    """Collate items of m crops each into one batch of B x m crops."""
    return [torch.cat(parts) for parts in zip(*(tuple(item) for item in items), strict=True)]
