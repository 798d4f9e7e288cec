"""ImageNet-sized folders on one machine: indexing time, loader-worker memory over an epoch, the cache's size.

Writes (once) a synthetic ImageFolder of ``--images`` tiny JPEGs in ``--classes`` classes (ImageNet's train split:
1,281,167 in 1,000; about 5 GB of inodes), then measures, each in a fresh process:

  index         ImageFolderData(...).setup("fit"): walking and listing the folder (a first and a second start)
  workers       each DataLoader worker's private memory (USS, /proc) at the start, middle and end of one
                epoch over the training set, and the main process's resident memory (flat: no copy-on-read growth)
  cache         a soft-label cache laid out for the folder (--crops crops, top --top-k of the classes): bytes on
                disk; training maps it, so it is held in the page cache, shared by every worker

    python benchmarks/large_folder.py                  # writes /tmp/large_folder (remove it with --remove)
    python benchmarks/large_folder.py --images 100000 --classes 100
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_folder(root: Path, images: int, classes: int) -> None:
    """``train/<class>/<i>.JPEG`` (the same 8x8 JPEG's bytes in each) and one val image per class; reused if complete."""
    from PIL import Image

    done = root / "folder.json"
    if done.is_file() and json.loads(done.read_text()) == {"images": images, "classes": classes}:
        return
    shutil.rmtree(root, ignore_errors=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(buffer, "JPEG")
    jpeg = buffer.getvalue()
    for split, count in (("train", images), ("val", classes)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(c, count, classes):
                (folder / f"{i:08d}.JPEG").write_bytes(jpeg)
    done.write_text(json.dumps({"images": images, "classes": classes}))


def private_kib(pid: int) -> int:
    """Unique set size: the process's private clean + dirty pages (what a copied-on-read page costs)."""
    fields = dict(line.split(":") for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return sum(int(fields[name].split()[0]) for name in ("Private_Clean", "Private_Dirty"))


def measure(root: Path, workers: int, batch_size: int, epoch: bool) -> dict:
    """In this (fresh) process: index the folder, then (``epoch``) one epoch of its training loader, sampling each
    worker's memory."""
    from datamodules import ImageFolderData

    started = time.perf_counter()
    data = ImageFolderData(str(root), image_size=8, batch_size=batch_size, num_workers=workers, check_images=False)
    data.setup("fit")
    index_s = time.perf_counter() - started
    rss = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    if not epoch:
        return {"index_s": index_s, "main_rss_kib": rss}
    loader = data.train_dataloader()
    samples = {}
    batches = iter(loader)
    total = len(loader)
    for index, _ in enumerate(batches):
        if index in (1, total // 2, total - 2):
            children = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
            samples[f"batch {index}"] = [private_kib(int(pid)) for pid in children]
    epoch_s = time.perf_counter() - started - index_s
    return {"index_s": index_s, "main_rss_kib": rss, "epoch_s": epoch_s, "batches": total, "worker_uss_kib": samples}


def cache_bytes(root: Path, images: int, classes: int, crops: int, top_k: int) -> dict:
    """A soft-label cache allocated for ``images`` images (arrays in full, as ``predict`` makes them): bytes on disk."""
    from datamodules.soft_labels import SoftLabelCache, SoftLabelStore

    folder = root.parent / f"{root.name}_cache"
    shutil.rmtree(folder, ignore_errors=True)
    config = SoftLabelCache(dir=str(folder), crops=crops, top_k=top_k)
    store = SoftLabelStore.create_or_resume(config, images, classes, "LargeFolder", {"data": "x", "teachers": []})
    on_disk = sum(p.stat().st_blocks * 512 for p in folder.iterdir())
    shutil.rmtree(folder)
    return {"crops": crops, "top_k": top_k, "bytes_per_image": store.bytes_per_image(), "bytes_on_disk": on_disk}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/large_folder"))
    parser.add_argument("--images", type=int, default=1_281_167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--crops", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--remove", action="store_true", help="delete the folder afterwards")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the fresh process's part
    parser.add_argument("--index-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "large_folder.json")
    args = parser.parse_args(argv)
    if args.measure:
        return print(json.dumps(measure(args.root, args.workers, args.batch_size, not args.index_only)))
    started = time.perf_counter()
    write_folder(args.root, args.images, args.classes)
    report = {"images": args.images, "classes": args.classes, "write_s": time.perf_counter() - started, "runs": []}
    for extra in ([], ["--index-only"]):  # first start with an epoch, then a second start
        run = [sys.executable, __file__, "--measure", "--root", str(args.root), "--workers", str(args.workers), *extra]
        result = subprocess.run(
            [*run, "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True
        )
        report["runs"].append(json.loads(result.stdout.strip().splitlines()[-1]))
    report["cache"] = cache_bytes(args.root, args.images, args.classes, args.crops, args.top_k)
    if args.remove:
        shutil.rmtree(args.root)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
