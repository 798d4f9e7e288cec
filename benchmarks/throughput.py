"""Training throughput of the MEAL V2 step against its floor, on one device, in one run.

Measures images/s of one optimizer step (forward, backward, SGD) on the same student, teachers,
batch and image size for:
  floor        the student alone on hard labels (the fastest any distillation step can be)
  online_fp32  MEAL V2 with the teachers run plainly every step
  online_fast  MEAL V2 with callbacks.FastTeachers (reduced precision / channels-last / folded BN)
  cached       MEAL V2 from cached soft labels (no teacher in the step)
and how close the fast teachers' soft targets stay to fp32 (top-1 agreement, mean KL). Data loading
is excluded: batches live on the device. Prints a Markdown table and writes JSON.

    python benchmarks/throughput.py                         # Fashion-MNIST-sized defaults, CPU here
    python benchmarks/throughput.py --device cuda --student resnet50 --teachers senet154 resnet152s \
        --num-classes 1000 --image-size 224 --in-chans 3 --batch-size 64
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from callbacks.fast_teachers import accelerate_teacher  # noqa: E402
from lightning_modules import MealV2  # noqa: E402
from lightning_modules.losses import ensemble_soft_targets  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    images = torch.randn(args.batch_size, args.in_chans, args.image_size, args.image_size, generator=generator).to(device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    module = build(args, device)
    optimizer = optimizer_for(module)

    def floor_step():
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(module.student(images), labels).backward()
        optimizer.step()

    def meal_step(soft_targets=None):
        optimizer.zero_grad(set_to_none=True)
        module.distillation_losses(images, labels, soft_targets)["loss"].backward()
        optimizer.step()

    timing = dict(steps=args.steps, warmup=args.warmup, batch_size=args.batch_size, device=device)
    results = {"floor": images_per_second(floor_step, **timing)}
    results["online_fp32"] = images_per_second(meal_step, **timing)
    with torch.no_grad():
        reference = ensemble_soft_targets(module.teachers(images))
    results["cached"] = images_per_second(lambda: meal_step(reference), **timing)

    for teacher in module.teachers:
        accelerate_teacher(teacher, args.teacher_precision, channels_last=args.channels_last, fold_bn=True)
    results["online_fast"] = images_per_second(meal_step, **timing)
    with torch.no_grad():
        fast = ensemble_soft_targets(module.teachers(images))
    agreement = float((fast.argmax(-1) == reference.argmax(-1)).float().mean())
    kl = float((reference * (reference.clamp_min(1e-12).log() - fast.clamp_min(1e-12).log())).sum(-1).mean())

    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "student": args.student,
        "teachers": args.teachers,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "in_chans": args.in_chans,
        "num_classes": args.num_classes,
        "teacher_precision": args.teacher_precision,
        "channels_last": args.channels_last,
        "images_per_s": results,
        "ratios": {
            "online_fast / online_fp32": results["online_fast"] / results["online_fp32"],
            "floor / cached": results["floor"] / results["cached"],
            "floor / online_fp32": results["floor"] / results["online_fp32"],
            "floor / online_fast": results["floor"] / results["online_fast"],
        },
        "fast_soft_targets": {"top1_agreement": agreement, "mean_kl": kl},
    }
    return report


def markdown(report: dict) -> str:
    r, q = report["images_per_s"], report["ratios"]
    lines = [
        f"{report['device']}, torch {report['torch']}; student {report['student']}, teachers {' + '.join(report['teachers'])}, "
        f"batch {report['batch_size']}, {report['in_chans']}x{report['image_size']}x{report['image_size']}, {report['num_classes']} classes.",
        "",
        "| step | images/s | vs floor |",
        "|---|---:|---:|",
    ]
    for name in ("floor", "online_fp32", "online_fast", "cached"):
        lines.append(f"| {name} | {r[name]:.0f} | {r[name] / r['floor']:.2f}x |")
    fast = report["fast_soft_targets"]
    lines += ["", f"online_fast / online_fp32 = {q['online_fast / online_fp32']:.2f}x; floor / cached = {q['floor / cached']:.2f}x; "
              f"fast teachers ({report['teacher_precision']}, channels_last={report['channels_last']}, folded BN): "
              f"top-1 agreement {100 * fast['top1_agreement']:.2f}%, mean KL {fast['mean_kl']:.2e}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="cifar_resnet8")
    parser.add_argument("--teachers", nargs="+", default=["cifar_resnet14", "cifar_wrn_16_1"])
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--in-chans", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--teacher-precision", choices=["32", "bf16", "16"], default=None,
                        help="default: bf16 on CUDA, 32 on CPU")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "throughput.json")
    args = parser.parse_args(argv)
    if args.teacher_precision is None:
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        args.teacher_precision = "bf16" if cuda else "32"
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
