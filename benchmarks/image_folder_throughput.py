"""Training images/s from a JPEG ImageFolder, data loading included: online teachers, the soft-label
cache with m crops per decoded image, and the student alone, through ImageFolderData's own loader.

First writes (once; reused while its settings match) a JPEG ImageFolder at ImageNet-like sizes from
Fashion-MNIST: each image upscaled to a random 256-500 px per side, tinted, with coarse texture and
grain so the files weigh about what photos of that size weigh (quality 90). Then, for one student,
teachers and step batch B (B training crops per optimizer step everywhere), with the workers of
``data.num_workers`` and the Trainer's precision from the hardware:

  decode              the raw training images alone: JPEG decode to a uint8 tensor, images/s
  loader_online       the online training data alone: decode + RandomResizedCrop + flip + normalize
  floor               the student alone on hard labels (Classifier) with that loader: the limit
  online              MEAL V2 with the teachers in the step (FastTeachers: their fast precision, folded BN)
  cached_m{m}         MEAL V2 from the soft-label cache, m crops per decoded image (B/m images x m crops)
  loader_cached_m{m}  that cached data alone (crops/s)
(the loaders alone: the DataModule's datasets and collate, --loader-batches random batches, same workers)

and the cache's generation (``predict``, once: crops/s, bytes per image). Rates are training crops per
second over the steps after ``--warmup`` (worker start-up and the first batches excluded), timed with two
host syncs per run (Lightning's ThroughputMonitor synchronizes CUDA on every step); every setting is
measured ``--repeats`` times in turn, reported as mean +- std, ratios paired by run. The teachers' cost
relative to the student's step is read from the same runs: (1/online - 1/floor) / (1/floor).

    python benchmarks/image_folder_throughput.py            # CPU here: resnet18 from seresnet152 + resnet152, 224 px
    python benchmarks/image_folder_throughput.py --accelerator gpu --student resnet50 \\
        --teachers senet154 resnet152s --batch-size 128 --workers 8 --train-per-class 1000
Models are randomly initialized (speed does not depend on the weights); writes results/image_folder_throughput.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reporting import device_name, save_and_print, synchronize  # noqa: E402

from callbacks import ChannelsLast, FastTeachers, SoftLabelWriter  # noqa: E402
from console import table_lines  # noqa: E402
from datamodules import ImageFolderData  # noqa: E402
from datamodules.fashion_mnist import find_idx, read_idx  # noqa: E402
from datamodules.soft_labels import SoftLabelCache, concat_crops  # noqa: E402
from lightning_modules import Classifier, MealV2  # noqa: E402
from lightning_modules.hardware import fast_trainer_precision  # noqa: E402

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_jpeg_folder(root: Path, source: Path, train_per_class: int, val_per_class: int, seed: int = 0) -> dict:
    """Fashion-MNIST as RGB JPEGs of 256-500 px per side in ``root/{train,val}/<class>/``; reused if it matches."""
    settings = {"source": str(source), "train_per_class": train_per_class, "val_per_class": val_per_class, "seed": seed}
    manifest = root / "folder.json"
    if manifest.is_file():
        existing = json.loads(manifest.read_text())
        if existing["settings"] == settings:
            return existing
    shutil.rmtree(root, ignore_errors=True)
    images = read_idx(find_idx(source, "train-images-idx3-ubyte"))
    labels = read_idx(find_idx(source, "train-labels-idx1-ubyte"))
    rng = np.random.default_rng(seed)
    sizes, pixels = [], []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        taken = {c: 0 for c in range(10)}
        for index in rng.permutation(len(images)):
            label = int(labels[index])
            if taken[label] == per_class:
                if all(n == per_class for n in taken.values()):
                    break
                continue
            taken[label] += 1
            path = root / split / f"class_{label}" / f"{split}_{index:05d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            photo_like(images[index], rng).save(path, quality=90)
            sizes.append(path.stat().st_size)
            pixels.append(Image.open(path).size)
        rng = np.random.default_rng(seed + 1)  # val draws its own images (some may repeat train's source)
    width, height = np.array(pixels).T
    report = {
        "settings": settings,
        "images": len(sizes),
        "mean_kb": float(np.mean(sizes) / 1e3),
        "mean_width": float(width.mean()),
        "mean_height": float(height.mean()),
    }
    manifest.write_text(json.dumps(report, indent=2))
    return report


def photo_like(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 28x28 item upscaled to a random 256-500 px per side, tinted, with coarse texture and grain."""
    width, height = (int(v) for v in rng.integers(256, 501, 2))
    item = np.asarray(Image.fromarray(gray).resize((width, height), Image.BICUBIC), dtype=np.float32) / 255
    background, tint = rng.uniform(0.0, 0.5, 3), rng.uniform(0.3, 1.0, 3)
    texture = rng.normal(0.5, 0.15, (height // 8, width // 8, 3)).clip(0, 1)
    texture = np.asarray(Image.fromarray((texture * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC))
    rgb = 255 * (background + item[..., None] * (tint - background)) + 60 * (texture / 255 - 0.5)
    rgb += rng.normal(0, 16, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


class StepTimer(L.Callback):
    """Training crops per second over the batches from ``warmup`` to the last: one sync at each end."""

    def __init__(self, warmup: int):
        self.warmup, self.samples, self.started, self.rate = warmup, 0, 0.0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            synchronize(trainer.strategy.root_device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx < self.warmup:
            return
        self.samples += len(batch[1])
        if batch_idx == trainer.num_training_batches - 1:
            synchronize(trainer.strategy.root_device)
            self.rate = self.samples / (time.perf_counter() - self.started)


def loader_rate(dataset, batch_size: int, workers: int, collate_fn, warmup: int, batches: int) -> float:
    """Samples (crops; images for the raw loader) per second a loader over ``dataset`` alone delivers: the
    DataModule's dataset and collate, ``batches`` random batches after ``warmup`` (one iterator, so the window
    is long enough to be steady and no epoch restarts the workers)."""
    sampler = RandomSampler(dataset, replacement=True, num_samples=(warmup + batches) * batch_size)
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn)
    samples, started = 0, time.perf_counter()
    for index, batch in enumerate(loader):
        if index == warmup:
            started = time.perf_counter()
        elif index > warmup:
            samples += len(batch[1])
    return samples / (time.perf_counter() - started)


def as_lists(batch):
    """Collate raw images of different sizes: (images, labels) as lists."""
    images, labels = zip(*batch, strict=True)
    return list(images), list(labels)


class Benchmark:
    """One student, teachers, folder and step batch; each ``*_rate`` method runs one setting."""

    def __init__(self, args, folder: Path):
        self.args, self.folder = args, folder
        self.precision = args.precision or fast_trainer_precision()
        self.cache = SoftLabelCache(dir=str(args.cache_dir), crops=max(args.crops), top_k=args.top_k)

    def data(self, crops_per_sample: int = 1, cached: bool = False) -> ImageFolderData:
        args = self.args
        if args.batch_size % crops_per_sample:
            raise ValueError(f"--batch-size {args.batch_size} must be a multiple of every m in --crops.")
        soft_labels = None
        if cached:
            soft_labels = dataclasses.replace(self.cache, crops_per_sample=crops_per_sample)
        return ImageFolderData(
            str(self.folder),
            image_size=args.image_size,
            batch_size=args.batch_size // crops_per_sample,
            num_workers=args.workers,
            soft_labels=soft_labels,
        )

    def model(self, data: ImageFolderData, soft_targets: str = "online") -> MealV2:
        L.seed_everything(0, verbose=False)  # the same teachers' weights in predict and fit (the cache's fingerprint)
        return MealV2(
            teachers=[{"name": name} for name in self.args.teachers],
            student={"name": self.args.student},
            num_classes=data.num_classes,
            in_chans=3,
            data_mean=data.mean,
            data_std=data.std,
            soft_targets=soft_targets,
        )

    def trainer(self, *callbacks, batches: int | None = None) -> L.Trainer:
        return L.Trainer(
            accelerator=self.args.accelerator,
            devices=1,
            precision=self.precision,
            max_epochs=1,
            limit_train_batches=batches,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ChannelsLast(), *callbacks],
        )

    def train_rate(self, module: L.LightningModule, data: ImageFolderData, *callbacks) -> float:
        timer = StepTimer(self.args.warmup)
        trainer = self.trainer(timer, *callbacks, batches=self.args.warmup + self.args.batches)
        trainer.fit(module, datamodule=data)
        if trainer.num_training_batches < self.args.warmup + self.args.batches:
            raise SystemExit(
                f"An epoch has {trainer.num_training_batches} batches, fewer than --warmup + --batches "
                f"({self.args.warmup + self.args.batches}): raise --train-per-class or lower --batches."
            )
        return timer.rate

    def decode_rate(self) -> float:
        data = self.data()
        data.setup("fit")
        return self.loader_rate(data.raw_train_set(), self.args.batch_size, as_lists)

    def loader_online_rate(self) -> float:
        data = self.data()
        data.setup("fit")
        return self.loader_rate(data.train_set, self.args.batch_size)

    def loader_rate(self, dataset, batch_size: int, collate_fn=None) -> float:
        args = self.args
        return loader_rate(dataset, batch_size, args.workers, collate_fn, args.warmup, args.loader_batches)

    def floor_rate(self) -> float:
        data = self.data()
        L.seed_everything(0, verbose=False)
        student = Classifier(
            {"name": self.args.student}, data.num_classes, 3, data.mean, data.std, lr=0.01, weight_decay=0.0
        )
        return self.train_rate(student, data)

    def online_rate(self) -> float:
        data = self.data()
        return self.train_rate(self.model(data), data, FastTeachers())

    def generate_cache(self) -> dict:
        """``predict`` into a fresh cache with max(--crops) crops per image: crops/s and bytes per image.
        With --keep-cache a complete cache for these settings is checked (its fingerprint) and reused, untimed."""
        reuse = self.args.keep_cache and (self.args.cache_dir / "meta.json").is_file()
        if not reuse:
            shutil.rmtree(self.args.cache_dir, ignore_errors=True)
        data = self.data(cached=True)
        trainer = self.trainer(SoftLabelWriter(), FastTeachers())
        started = time.perf_counter()
        trainer.predict(self.model(data), datamodule=data, return_predictions=False)
        seconds = time.perf_counter() - started
        store = data.soft_label_store
        images = store.meta["images"]
        if reuse:
            return {"images": images, "crops": store.meta["crops"], "reused": True}
        return {
            "images": images,
            "crops": store.meta["crops"],
            "seconds": seconds,
            "crops_per_s": images * store.meta["crops"] / seconds,
            "bytes_per_image": store.bytes_per_image(),
        }

    def all_rates(self) -> dict[str, float]:
        """One measurement of every setting (the cache must exist)."""
        rates = {"decode": self.decode_rate(), "loader_online": self.loader_online_rate()}
        rates["floor"] = self.floor_rate()
        rates["online"] = self.online_rate()
        for m in self.args.crops:
            rates[f"cached_m{m}"], rates[f"loader_cached_m{m}"] = self.cached_rates(m)
        return rates

    def cached_rates(self, m: int) -> tuple[float, float]:
        """MEAL V2 from the cache with m crops per decoded image, and that loader alone."""
        data = self.data(crops_per_sample=m, cached=True)
        train = self.train_rate(self.model(data, soft_targets="cached"), data)
        return train, self.loader_rate(data.train_set, data.batch_size, concat_crops if m > 1 else None)


def run(args) -> dict:
    source = args.fashion_mnist
    if find_idx(source, "train-images-idx3-ubyte") is None:
        raise SystemExit(f"No Fashion-MNIST IDX files in '{source}': run `make data` or pass --fashion-mnist DIR.")
    folder_report = write_jpeg_folder(args.folder, source, args.train_per_class, args.val_per_class)
    bench = Benchmark(args, args.folder)
    generation = bench.generate_cache()
    bench.decode_rate()  # discarded: a process's first loader runs slower (first file reads, allocator)
    runs = [bench.all_rates() for _ in range(args.repeats)]
    rates = {name: mean_std([run[name] for run in runs]) for name in runs[0]}
    ratios = {f"floor / cached_m{m}": ("floor", f"cached_m{m}") for m in args.crops}
    ratios |= {f"cached_m{m} / online": (f"cached_m{m}", "online") for m in args.crops}
    device = bench.trainer().strategy.root_device
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "student": args.student,
        "teachers": args.teachers,
        "precision": bench.precision,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "workers": args.workers,
        "steps_timed": args.batches,
        "folder": folder_report,
        "cache": generation,
        "repeats": args.repeats,
        "runs": runs,
        "crops_per_s": rates,
        "teacher_cost_over_student_step": mean_std([run["floor"] / run["online"] - 1 for run in runs]),
        "ratios": {name: mean_std([run[a] / run[b] for run in runs]) for name, (a, b) in ratios.items()},
    }


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of repeated measurements."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}


def markdown(report: dict) -> str:
    r, folder, cache = report["crops_per_s"], report["folder"], report["cache"]
    lines = [
        f"{report['device']}, torch {report['torch']}, {report['precision']}; student {report['student']}, teachers "
        f"{' + '.join(report['teachers'])}; {report['batch_size']} crops per step at {report['image_size']} px, "
        f"{report['workers']} loader workers, {report['steps_timed']} steps timed. Folder: {folder['images']} JPEGs, "
        f"mean {folder['mean_width']:.0f}x{folder['mean_height']:.0f} px, {folder['mean_kb']:.0f} kB.",
        "",
    ]
    floor = r["floor"]["mean"]
    rows = [
        [name, f"{rate['mean']:.1f} +- {rate['std']:.1f}", f"{rate['mean'] / floor:.2f}x"] for name, rate in r.items()
    ]
    lines += table_lines(f"setting | crops/s (mean +- std, {report['repeats']} runs) | vs floor", rows)
    q, cost = report["ratios"], report["teacher_cost_over_student_step"]
    lines += [
        "",
        f"Teachers cost {cost['mean']:.2f} +- {cost['std']:.2f}x the student's step (with loading); ratios per run: "
        + "; ".join(f"{k} = {v['mean']:.2f} +- {v['std']:.2f}x" for k, v in q.items())
        + (
            f". Cache: {cache['images']} images x {cache['crops']} crops in {cache['seconds']:.0f} s "
            f"({cache['crops_per_s']:.1f} crops/s, ensemble val check included), {cache['bytes_per_image']} bytes per image."
            if not cache.get("reused")
            else f". Cache reused (--keep-cache): {cache['images']} images x {cache['crops']} crops."
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teachers", nargs="+", default=["seresnet152", "resnet152"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16, help="crops per optimizer step (images x m)")
    parser.add_argument("--crops", type=int, nargs="+", default=[1, 4, 8], help="the m crops per decoded image")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batches", type=int, default=24, help="steps timed after the warm-up")
    parser.add_argument("--loader-batches", type=int, default=120, help="batches timed for the loaders alone")
    parser.add_argument("--train-per-class", type=int, default=48)
    parser.add_argument("--val-per-class", type=int, default=10)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed where the hardware has bf16, else 32")
    parser.add_argument("--fashion-mnist", type=Path, default=FASHION_MNIST)
    parser.add_argument("--folder", type=Path, default=ROOT / "results" / "jpeg_folder")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "results" / "jpeg_folder_cache")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of every setting (mean +- std)")
    parser.add_argument("--keep-cache", action="store_true", help="reuse a complete cache there (no generation timing)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "image_folder_throughput.json")
    args = parser.parse_args(argv)
    return save_and_print(run(args), args.out, markdown)


if __name__ == "__main__":
    main()
