"""Training throughput of the MEAL V2 step against its physical limit, on one device, in one run.

Measures images/s of one optimizer step (forward, backward, SGD) on the same student, teachers,
batch and image size for:
  floor_*        the student alone on hard labels, at each setting (fp32 / bf16-mixed, +channels-last; --compile:
                 +compiled), on --threads threads (default 1, what each of the demo's two runs gets on 2 cores)
  floor          the floor at the chosen student setting (--student-precision, --channels-last)
  online_fp32    MEAL V2 with the teachers run plainly (fp32) every step
  online_fast    MEAL V2 with callbacks.FastTeachers (precision from the hardware, channels-last, folded
                 BN; --compile adds torch.compile, its compile time reported apart)
  teachers_alone the fast teachers' inference alone
  online_limit   1 / (1/floor + 1/teachers_alone): student step and teachers cannot overlap on one device
  cached         MEAL V2 from cached soft labels (no teacher in the step)
and how close the fast teachers' soft targets stay to fp32 (top-1 agreement, mean KL). Data loading
is excluded from those rows: batches live on the device. Two rows include it, for the embedded default
(Fashion-MNIST and the zoo's soft-label cache, found with --data-dir and --cache-dir; skipped, with a note,
for other shapes or without the data):
  hard_labels_loaded  the student's step on hard labels, batches from FashionMNISTData's training loader
  cached_loaded       MEAL V2 from the cache, batches from the same loader replaying the cache
On CUDA the peak memory of each step is reported too. Prints a Markdown table and writes JSON.

    python benchmarks/throughput.py                         # Fashion-MNIST-sized defaults, CPU here
    python benchmarks/throughput.py --device cuda --student resnet50 --teachers senet154 resnet152s \
        --num-classes 1000 --image-size 224 --in-chans 3 --batch-size 128 --compile
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reporting import device_name, save_and_print, synchronize  # noqa: E402

from callbacks.fast_teachers import accelerate_teacher  # noqa: E402
from console import table_lines  # noqa: E402
from datamodules import FashionMNISTData  # noqa: E402
from datamodules.soft_labels import CachedCrops, SoftLabelStore  # noqa: E402
from errors import DataError  # noqa: E402
from lightning_modules import MealV2  # noqa: E402
from lightning_modules.hardware import fast_precision  # noqa: E402
from lightning_modules.losses import ensemble_soft_targets  # noqa: E402


def images_per_second(step, batch_size: int, steps: int, warmup: int, device: torch.device, rounds: int = 3) -> float:
    """Best of ``rounds`` timings of ``steps`` steps each (the least disturbed by other work)."""
    for _ in range(warmup):
        step()
    best = 0.0
    for _ in range(rounds):
        synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        best = max(best, batch_size * steps / (time.perf_counter() - started))
    return best


def measure(name: str, step, timing: dict, results: dict, memory: dict) -> None:
    """images/s of ``step`` into ``results[name]``; on CUDA its peak memory (GiB) into ``memory[name]``."""
    device = timing["device"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results[name] = images_per_second(step, **timing)
    if device.type == "cuda":
        memory[name] = torch.cuda.max_memory_allocated(device) / 2**30


def build(args, device: torch.device) -> MealV2:
    torch.manual_seed(0)
    module = MealV2(
        teachers=[{"name": name} for name in args.teachers],
        student={"name": args.student},
        num_classes=args.num_classes,
        in_chans=args.in_chans,
        data_mean=[0.5] * args.in_chans,
        data_std=[0.5] * args.in_chans,
    )
    return module.to(device)


def optimizer_for(module: MealV2) -> torch.optim.Optimizer:
    params = list(module.student.parameters()) + list(module.discriminator.parameters())
    return torch.optim.SGD(params, lr=1e-4, momentum=0.9)


def run(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator().manual_seed(0)
    shape = (args.batch_size, args.in_chans, args.image_size, args.image_size)
    images = torch.randn(*shape, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    module = build(args, device)
    optimizer = optimizer_for(module)
    timing = dict(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, device=device)
    results, memory = {}, {}

    def autocast(bf16: bool):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    student_bf16 = args.student_precision == "bf16-mixed"

    def floor_step(bf16: bool, batch=None):
        x, y = batch if batch is not None else (images, labels)
        optimizer.zero_grad(set_to_none=True)
        with autocast(bf16):
            loss = torch.nn.functional.cross_entropy(module.student(x).float(), y)
        loss.backward()
        optimizer.step()

    def meal_step(cached=None, batch=None):
        x, y = batch if batch is not None else (images, labels)
        optimizer.zero_grad(set_to_none=True)
        with autocast(student_bf16):
            loss = module.distillation_losses(x, y, cached)["loss"]
        loss.backward()
        optimizer.step()

    for channels_last in (False, True):
        module.student.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        for bf16 in (False, True):
            name = f"floor_{'bf16' if bf16 else 'fp32'}{'_channels_last' if channels_last else ''}"
            measure(name, lambda bf16=bf16: floor_step(bf16), timing, results, memory)
    if args.compile:  # the student compiled (inductor), channels-last; the first calls pay the compile
        student = module.student
        module.student = torch.compile(student)
        for bf16 in (False, True):
            name = f"floor_{'bf16' if bf16 else 'fp32'}_channels_last_compiled"
            measure(name, lambda bf16=bf16: floor_step(bf16), timing, results, memory)
        module.student = student
    module.student.to(memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    results["floor"] = results[
        f"floor_{'bf16' if student_bf16 else 'fp32'}{'_channels_last' if args.channels_last else ''}"
    ]

    note = loaded_rows(args, module, floor_step, meal_step, timing, results, student_bf16)

    measure("online_fp32", meal_step, timing, results, memory)
    with torch.no_grad():
        teacher_logits = module.teachers(images)
        reference = ensemble_soft_targets(teacher_logits)
    measure("cached", lambda: meal_step((reference, teacher_logits.float().mean(0))), timing, results, memory)

    for teacher in module.teachers:
        accelerate_teacher(teacher, args.teacher_precision, channels_last=args.channels_last, fold_bn=True)
        if args.compile:
            teacher.model = torch.compile(teacher.model, dynamic=False)
    synchronize(device)
    started = time.perf_counter()
    with torch.no_grad():
        fast = ensemble_soft_targets(module.teachers(images))  # with --compile: the compile happens here
    synchronize(device)
    first_call_s = time.perf_counter() - started
    measure("teachers_alone", lambda: module.teachers(images), timing, results, memory)
    measure("online_fast", meal_step, timing, results, memory)
    results["online_limit"] = 1 / (1 / results["floor"] + 1 / results["teachers_alone"])
    agreement = float((fast.argmax(-1) == reference.argmax(-1)).float().mean())
    kl = float((reference * (reference.clamp_min(1e-12).log() - fast.clamp_min(1e-12).log())).sum(-1).mean())

    report = {
        "device": device_name(device),
        "torch": torch.__version__,
        "student": args.student,
        "teachers": args.teachers,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "in_chans": args.in_chans,
        "num_classes": args.num_classes,
        "student_precision": args.student_precision,
        "teacher_precision": args.teacher_precision,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "teachers_first_call_s": first_call_s,
        "images_per_s": results,
        "peak_memory_gib": memory,
        "ratios": {
            "online_fast / online_fp32": results["online_fast"] / results["online_fp32"],
            "online_fast / online_limit": results["online_fast"] / results["online_limit"],
            "cached / floor": results["cached"] / results["floor"],
            "floor / cached": results["floor"] / results["cached"],
        },
        "fast_soft_targets": {"top1_agreement": agreement, "mean_kl": kl},
        "loaded_note": note,
    }
    if "cached_loaded" in results:
        report["ratios"]["cached_loaded / hard_labels_loaded"] = (
            results["cached_loaded"] / results["hard_labels_loaded"]
        )
    return report


def loaded_rows(args, module, floor_step, meal_step, timing, results, student_bf16) -> str:
    """The embedded default's two steps with their DataLoaders (num_workers 0, as the recipes): hard labels through
    FashionMNISTData's augmented training set, MEAL V2 through the same loader replaying the zoo's cache."""
    shape = (args.in_chans, args.image_size, args.num_classes)
    if shape != (1, 28, 10):
        return f"loaded rows skipped: they use Fashion-MNIST (1x28x28, 10 classes), not {shape}"
    try:
        hard = FashionMNISTData(data_dir=args.data_dir, batch_size=args.batch_size, num_workers=0)
        hard.setup("fit")
        cached = FashionMNISTData(data_dir=args.data_dir, batch_size=args.batch_size, num_workers=0)
        cached.setup("fit")
        meta = json.loads((args.cache_dir / "meta.json").read_text())
        cached.train_set = CachedCrops(cached.raw_train_set(), SoftLabelStore(args.cache_dir, meta, "r"), cached.render)
    except (DataError, OSError) as error:
        return f"loaded rows skipped: {error}"
    device = timing["device"]

    def from_loader(data):
        batches = iter(data.train_dataloader())

        def next_batch():
            nonlocal batches
            try:
                return next(batches)
            except StopIteration:
                batches = iter(data.train_dataloader())
                return next(batches)

        return lambda: [part.to(device, non_blocking=True) for part in next_batch()]

    loaded = {**timing, "steps": args.loaded_steps}
    hard_batch, cached_batch = from_loader(hard), from_loader(cached)
    results["hard_labels_loaded"] = images_per_second(lambda: floor_step(student_bf16, hard_batch()), **loaded)

    def cached_step():
        x, y, soft, teacher_logits = cached_batch()
        meal_step((soft, teacher_logits), (x, y))

    results["cached_loaded"] = images_per_second(cached_step, **loaded)
    return f"loaded rows: {args.data_dir} or the system copy, cache {args.cache_dir}, {args.loaded_steps} batches per round"


def markdown(report: dict) -> str:
    r, q, memory = report["images_per_s"], report["ratios"], report["peak_memory_gib"]
    lines = [
        f"{report['device']}, torch {report['torch']}; student {report['student']} ({report['student_precision']}, "
        f"channels_last={report['channels_last']}), teachers {' + '.join(report['teachers'])}, batch {report['batch_size']}, "
        f"{report['in_chans']}x{report['image_size']}x{report['image_size']}, {report['num_classes']} classes.",
        "",
    ]
    names = [n for n in r if n.startswith("floor_")]
    names += ["floor", "online_fp32", "online_fast", "teachers_alone", "online_limit", "cached"]
    names += [n for n in ("hard_labels_loaded", "cached_loaded") if n in r]
    rows = [[name, f"{r[name]:.0f}", f"{r[name] / r['floor']:.2f}x"] for name in names]
    if memory:
        rows = [[*row, f"{memory[row[0]]:.1f}" if row[0] in memory else ""] for row in rows]
    lines += table_lines("step | images/s | vs floor" + (" | peak GiB" if memory else ""), rows)
    fast = report["fast_soft_targets"]
    lines += [
        "",
        f"online_fast / online_fp32 = {q['online_fast / online_fp32']:.2f}x; online_fast / online_limit = "
        f"{q['online_fast / online_limit']:.2f}x; cached / floor = {q['cached / floor']:.2f}x; fast teachers "
        f"({report['teacher_precision']}, channels_last={report['channels_last']}, folded BN, compile={report['compile']}): "
        f"top-1 agreement {100 * fast['top1_agreement']:.2f}%, mean KL {fast['mean_kl']:.2e}; their first call took "
        f"{report['teachers_first_call_s']:.1f} s" + (" (the compile)." if report["compile"] else "."),
    ]
    if "cached_loaded / hard_labels_loaded" in q:
        lines.append(f"With data loading: cached / hard labels = {q['cached_loaded / hard_labels_loaded']:.2f}x.")
    lines.append(report["loaded_note"] + ".")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="cifar_resnet8")
    parser.add_argument("--teachers", nargs="+", default=["cifar_resnet20", "cifar_wrn_16_2"])  # the zoo's pair
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--teacher-precision", choices=["32", "bf16", "16"], default=None, help="default: from the hardware"
    )
    parser.add_argument(
        "--student-precision", choices=["32", "bf16-mixed"], default=None, help="default: from the hardware"
    )
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the fast teachers and the student's floor"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (default 1: each demo run's share of 2 cores)"
    )
    parser.add_argument("--data-dir", default="data/fashion-mnist", help="Fashion-MNIST for the loaded rows")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / "zoo" / "fashion_mnist" / "soft_labels")
    parser.add_argument("--loaded-steps", type=int, default=50, help="batches per timed round of the loaded rows")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "throughput.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    args.teacher_precision = args.teacher_precision or fast_precision(device)
    args.student_precision = args.student_precision or ("bf16-mixed" if fast_precision(device) == "bf16" else "32")
    return save_and_print(run(args), args.out, markdown)


if __name__ == "__main__":
    main()
