"""The MEAL V2 step on XLA without a TPU (``make xla-check``): torch_xla's PJRT runtime on the CPU.

What a TPU run needs of the step, checked where no TPU is: it compiles once (static shapes), moves nothing
from the device to the host, falls back to no ``aten::`` CPU op, computes the eager CPU step's loss, and its
checkpoint loads on the CPU with the same weights. The ResNet-50 recipe's architectures (teachers senet154 +
resnet152s, student resnet50) at small widths, ImageNet-shaped 3 x 64 x 64 batches, random weights; every
combination of precision (``32-true``, ``bf16-true``), soft targets (online teachers, cached soft labels) and
discriminator (``official``, ``none``), and CutMix with online teachers.

Lightning's XLA accelerator runs only where torch_xla finds TPU chips (it asks the TPU's metadata server), so
the step runs here in a short loop: the module's ``distillation_losses`` (everything ``training_step`` computes;
``training_step`` adds Lightning's logging), its own parameter groups and optimizer, and ``torch_xla.sync()``
once per step, as Lightning's XLA strategy does after each optimizer step.

    make xla-check            # a separate environment with torch_xla; PJRT_DEVICE=CPU
    python checks/xla_check.py --steps 12 --warmup 2

Writes ``results/xla_check/report.md`` and ``report.json``; exits non-zero when any check fails.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from console import table_lines  # noqa: E402
from lightning_modules import MealV2  # noqa: E402
from lightning_modules.optim import build_optimizer  # noqa: E402

RECIPE = ROOT / "configs/imagenet/resnet50_from_senet154+resnet152s.yaml"
NUM_CLASSES, IMAGE_SIZE = 100, 64
# Small widths of the recipe's families: one block per stage, 16-128 channels (senet154's grouped convs at 4 groups).
SMALL = {"layers": [1, 1, 1, 1], "channels": [16, 32, 64, 128], "stem_width": 16}
SMALL_BY_FAMILY = {"senet154": {**SMALL, "cardinality": 4, "base_width": 16}}
TOLERANCE = {"32-true": 1e-4, "bf16-true": 2e-2}  # relative, on the first step's loss


def recipe_models() -> tuple[list[str], str]:
    """The recipe's teacher and student architectures (timm names without their weight tags)."""
    model = yaml.safe_load(RECIPE.read_text())["model"]["init_args"]
    return [t["name"].split(".")[0] for t in model["teachers"]], model["student"]["name"].split(".")[0]


def small_source(name: str) -> dict:
    return {"name": name, "model_kwargs": SMALL_BY_FAMILY.get(name, SMALL)}


def build_module(precision: str, soft_targets: str, discriminator: str, cutmix: bool) -> MealV2:
    torch.manual_seed(0)
    teachers, student = recipe_models()
    module = MealV2(
        teachers=[small_source(name) for name in teachers],
        student=small_source(student),
        num_classes=NUM_CLASSES,
        in_chans=3,
        data_mean=[0.485, 0.456, 0.406],
        data_std=[0.229, 0.224, 0.225],
        discriminator=discriminator,
        soft_targets=soft_targets,
        cutmix_prob=1.0 if cutmix else 0.0,
        teacher_check_batches=0,
    )
    module.train()
    return module.to(torch.bfloat16) if precision == "bf16-true" else module


def make_batches(module: MealV2, steps: int, batch_size: int, dtype: torch.dtype) -> list[tuple]:
    """Distinct batches of one shape: images, labels and, for cached soft targets, the ensemble's probabilities
    and mean logits (as the soft-label cache hands them to the step)."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(steps):
        images = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(dtype)
        labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
        cached = None
        if module.hparams.soft_targets == "cached":
            with torch.no_grad():
                logits = module.teachers(images)
            cached = (logits.softmax(-1).mean(0), logits.mean(0))
        batches.append((images, labels, cached))
    return batches


def step(module: MealV2, optimizer: torch.optim.Optimizer, batch: tuple, index: int, steps: int) -> torch.Tensor:
    """One training step as Lightning runs it: the module's losses (CutMix first where it is on), backward,
    the optimizer, and the training agreement metric."""
    images, labels, cached = batch
    if module.hparams.cutmix_prob > 0:
        images = module._cutmix(images)
    out = module.distillation_losses(images, labels, cached, epoch=index / steps)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()
    module.train_agreement.update(out["batch"].student_logits.detach(), out["batch"].mean_probabilities.argmax(-1))
    return out["loss"].detach()


def optimizer_of(module: MealV2) -> torch.optim.Optimizer:
    hp = module.hparams
    return build_optimizer(module.param_groups(), "sgd", hp.lr, hp.momentum, hp.weight_decay)


def check_case(precision: str, soft_targets: str, discriminator: str, cutmix: bool, args) -> dict:
    import lightning
    import torch_xla
    import torch_xla.core.xla_model as xm
    import torch_xla.debug.metrics as met
    from lightning.fabric.plugins.io.xla import XLACheckpointIO

    device = torch_xla.device()
    dtype = torch.bfloat16 if precision == "bf16-true" else torch.float32
    module = build_module(precision, soft_targets, discriminator, cutmix)
    batches = make_batches(module, args.warmup + args.steps, args.batch_size, dtype)

    # The eager CPU step and the XLA step from the same weights on the same batch (CutMix's draw replayed).
    eager = copy.deepcopy(module)
    torch.manual_seed(2)
    eager_loss = float(step(eager, optimizer_of(eager), batches[0], 0, args.steps))
    module = module.to(device)
    optimizer = optimizer_of(module)
    on_device = [
        (images.to(device), labels.to(device), None if c is None else tuple(t.to(device) for t in c))
        for images, labels, c in batches
    ]
    torch_xla.sync()
    met.clear_all()

    torch.manual_seed(2)
    losses, compiles_at = [], []
    started = time.perf_counter()
    for index, batch in enumerate(on_device):
        if index == args.warmup:
            warmup_compiles = (met.metric_data("CompileTime") or (0,))[0]
            transfers_before = (met.metric_data("TransferFromDeviceTime") or (0,))[0]
            compiles_before = warmup_compiles
        losses.append(step(module, optimizer, batch, index, args.steps))
        torch_xla.sync()
        compiles_at.append((met.metric_data("CompileTime") or (0,))[0])
    xm.wait_device_ops()
    seconds = time.perf_counter() - started
    compiles_after_warmup = compiles_at[-1] - compiles_before
    transfers_in_steps = (met.metric_data("TransferFromDeviceTime") or (0,))[0] - transfers_before
    fallbacks = sorted(met.executed_fallback_ops())
    losses = [float(loss) for loss in losses]  # read after the loop: the only transfers
    relative = abs(losses[0] - eager_loss) / max(abs(eager_loss), 1e-12)

    # A checkpoint written on XLA (Lightning's XLA writer) loads on the CPU with the same weights.
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    module.on_save_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "xla.ckpt"
        XLACheckpointIO().save_checkpoint(checkpoint, path)
        loaded = MealV2.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    trained = {k: v.cpu() for k, v in module.state_dict().items() if not k.startswith("teachers.")}
    reloaded = {k: v for k, v in loaded.state_dict().items() if not k.startswith("teachers.")}
    same_weights = trained.keys() == reloaded.keys() and all(torch.equal(trained[k], reloaded[k]) for k in trained)

    case = {
        "precision": precision,
        "soft_targets": soft_targets,
        "discriminator": discriminator,
        "cutmix": cutmix,
        "warmup_compilations": warmup_compiles,
        "compilations_per_step": [b - a for a, b in zip([0, *compiles_at], compiles_at[:], strict=False)],
        "compilations_after_warmup": compiles_after_warmup,
        "transfers_in_steps": transfers_in_steps,
        "fallbacks": fallbacks,
        "loss_eager_cpu": eager_loss,
        "loss_xla": losses[0],
        "loss_relative_difference": relative,
        "losses": losses,
        "checkpoint_loads_on_cpu_same_weights": same_weights,
        "seconds": round(seconds, 1),
    }
    case["ok"] = (
        compiles_after_warmup == 0
        and transfers_in_steps == 0
        and not fallbacks
        and relative <= TOLERANCE[precision]
        and all(torch.isfinite(torch.tensor(losses)).tolist())
        and same_weights
    )
    return case


def cases() -> list[tuple[str, str, str, bool]]:
    grid = [
        (p, s, d, False) for p in ("32-true", "bf16-true") for s in ("online", "cached") for d in ("official", "none")
    ]
    return grid + [("32-true", "online", "official", True)]


def report(results: list[dict], args, seconds: float) -> str:
    import torch_xla

    from lightning_modules.hardware import machine

    lines = [
        "# MEAL V2 step on XLA (PJRT on the CPU)",
        "",
        f"`python checks/xla_check.py --steps {args.steps} --warmup {args.warmup} --batch-size {args.batch_size}`"
        f" on {machine()}; torch {torch.__version__}, "
        f"torch_xla {torch_xla.__version__}, PJRT_DEVICE={os.environ.get('PJRT_DEVICE')}; {seconds:.0f} s in all.",
        "",
        f"Models: {' + '.join(recipe_models()[0])} -> {recipe_models()[1]} at small widths ({SMALL}), "
        f"{NUM_CLASSES} classes, batches of {args.batch_size} x 3 x {IMAGE_SIZE} x {IMAGE_SIZE}.",
        "",
        *table_lines(
            "precision | soft targets | discriminator | CutMix | compilations in warm-up | after warm-up "
            f"({args.steps} steps) | device-to-host transfers in the steps | aten fallbacks | loss eager CPU | loss XLA "
            "| rel. diff | checkpoint on CPU | ok",
            [[r["precision"], r["soft_targets"], r["discriminator"], "yes" if r["cutmix"] else "no",
              r["warmup_compilations"], r["compilations_after_warmup"], r["transfers_in_steps"],
              ", ".join(r["fallbacks"]) or "none", f"{r['loss_eager_cpu']:.5f}", f"{r['loss_xla']:.5f}",
              f"{r['loss_relative_difference']:.1e}",
              "same weights" if r["checkpoint_loads_on_cpu_same_weights"] else "DIFFERS", "yes" if r["ok"] else "NO"]
             for r in results],
            left=13,
        ),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="steps checked after the warm-up (at least 10)")
    parser.add_argument("--warmup", type=int, default=2, help="steps that may compile")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "results/xla_check")
    args = parser.parse_args()
    os.environ.setdefault("PJRT_DEVICE", "CPU")  # XLA devices on the CPU, unless told otherwise
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        print("error: torch_xla is not installed here: run `make xla-check` (its own environment).", file=sys.stderr)
        return 2
    started = time.perf_counter()
    results = []
    for precision, soft_targets, discriminator, cutmix in cases():
        result = check_case(precision, soft_targets, discriminator, cutmix, args)
        print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
        results.append(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(results, indent=1))
    text = report(results, args, time.perf_counter() - started)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
