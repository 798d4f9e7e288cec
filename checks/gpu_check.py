"""One prepared device check (``make gpu-check``): what a short loan of a GPU must answer, in one command.

On a machine with CUDA (sized for one H100/H200-class GPU, about 8 minutes; a smaller GPU takes longer and
may need a smaller --batch-size): the ``gpu``-marked tests; ``benchmarks/throughput.py`` at ImageNet scale
(student resnet50, teachers senet154 + resnet152s, random weights, 224 px, batch 128, bf16-mixed,
channels-last, compiled fast teachers); ``benchmarks/image_folder_throughput.py`` on a generated JPEG folder
with data loading (online vs cached m = 1/4/8 vs the floor); a short ``cli.py fit`` of the ResNet-50 recipe's
architectures (random weights: no hub needed) with FastTeachers + compile, stopped at a step checkpoint and
resumed from it. Without CUDA the same pipeline runs end to end with tiny models on the CPU: a rehearsal,
said so in the report, so the script cannot rot (CI runs it). Writes ``results/gpu_check/report.md`` and
``report.json`` (device, driver, torch and CUDA versions, every figure, each target met or not, and the
prediction for this device) and exits non-zero only when a step fails, never for a missed target.

    make gpu-check                      # = python checks/gpu_check.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from console import table_lines  # noqa: E402

RECIPE = ROOT / "configs/imagenet/resnet50_from_senet154+resnet152s.yaml"
# RTX 3090 from timm's published benchmarks (AMP, channels-last): senet154 738 and resnet152s 1445 img/s
# inference, resnet50 1218 img/s training. Online step: 1 / (1/1218 + 1/738 + 1/1445) ~ 350 img/s; cached ~ the floor.
RTX_3090 = {"resnet50_train": 1218.0, "online": 350.0, "cached": 1200.0}

SETTINGS = {
    "gpu": {
        "throughput": ["--device", "cuda", "--student", "resnet50", "--teachers", "senet154", "resnet152s",
                       "--num-classes", "1000", "--in-chans", "3", "--image-size", "224", "--batch-size", "128",
                       "--steps", "10", "--warmup", "3", "--compile"],
        "folder": ["--student", "resnet50", "--teachers", "senet154", "resnet152s", "--image-size", "224",
                   "--batch-size", "64", "--repeats", "1", "--warmup", "3", "--batches", "12",
                   "--loader-batches", "40", "--train-per-class", "24", "--val-per-class", "4"],
        "names": {"student": "resnet50", "teachers": ["senet154", "resnet152s"]},
        "fit": {"image_size": 160, "batch_size": 32, "steps": 40, "accelerator": "gpu", "precision": "bf16-mixed"},
    },
    "rehearsal": {
        "throughput": ["--device", "cpu", "--batch-size", "16", "--steps", "2", "--warmup", "1"],
        "folder": ["--student", "test_resnet", "--teachers", "test_resnet", "cifar_resnet8", "--image-size", "32",
                   "--batch-size", "8", "--crops", "1", "4", "8", "--repeats", "1", "--warmup", "1", "--batches", "2",
                   "--loader-batches", "4", "--train-per-class", "4", "--val-per-class", "2", "--workers", "0",
                   "--precision", "32"],
        "names": {"student": "test_resnet", "teachers": ["test_resnet", "cifar_resnet8"]},
        "fit": {"image_size": 32, "batch_size": 4, "steps": 6, "accelerator": "cpu", "precision": "32-true"},
    },
}  # fmt: skip


def run(name: str, command: list[str], log_dir: Path, report: dict) -> bool:
    """Run one step; its output goes to ``<name>.log``; the step's status and time go into the report."""
    started = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        code = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    report["steps"][name] = {"ok": code == 0, "exit": code, "seconds": round(time.perf_counter() - started, 1)}
    print(
        f"gpu-check: {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {report['steps'][name]['seconds']:.0f} s",
        flush=True,
    )
    return code == 0


def fit_overlay(out: Path, settings: dict, folder: Path) -> Path:
    """The ResNet-50 recipe's models with random weights (no hub) on the generated folder, a step checkpoint midway."""
    names, fit = settings["names"], settings["fit"]
    overlay = {
        "model": {"init_args": {
            "teachers": [{"name": name, "pretrained": False} for name in names["teachers"]],
            "student": {"name": names["student"], "pretrained": False},
        }},
        "data": {"init_args": {"data_dir": str(folder), "image_size": fit["image_size"], "batch_size": fit["batch_size"],
                               "num_workers": 0 if fit["accelerator"] == "cpu" else None}},
        "trainer": {"accelerator": fit["accelerator"], "devices": 1, "strategy": "auto", "precision": fit["precision"],
                    "max_epochs": -1, "limit_val_batches": 2, "enable_progress_bar": False,
                    "logger": {"init_args": {"save_dir": str(out / "runs"), "version": "gpu_check"}},
                    "callbacks": [{"class_path": "ChannelsLast"},
                                  {"class_path": "FastTeachers", "init_args": {"compile": fit["accelerator"] == "gpu"}}]},
        "last_checkpoint": {"every_n_train_steps": fit["steps"] // 2},
    }  # fmt: skip
    path = out / "fit_overlay.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path


def device_facts(rehearsal: bool) -> dict:
    facts = {"torch": torch.__version__, "cuda": torch.version.cuda, "rehearsal": rehearsal}
    if rehearsal:
        from lightning_modules.hardware import machine

        facts["device"] = f"CPU ({machine()}): a rehearsal with tiny models, no GPU figures"
        return facts
    facts["device"] = torch.cuda.get_device_name(0)
    try:
        query = ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"]
        facts["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["driver"] = "unknown (nvidia-smi not found)"
    return facts


def targets(throughput: dict) -> dict:
    r = throughput["images_per_s"]
    checks = {
        "online fast >= 1.5x online plain (fp32)": (r["online_fast"] / r["online_fp32"], 1.5),
        "online fast >= 0.9x the online limit": (r["online_fast"] / r["online_limit"], 0.9),
        "cached >= 0.9x the floor": (r["cached"] / r["floor"], 0.9),
    }
    return {
        name: {"ratio": round(ratio, 3), "target": target, "met": ratio >= target}
        for name, (ratio, target) in checks.items()
    }


def prediction(throughput: dict) -> dict:
    """The RTX 3090 estimate, scaled to this device by its measured student floor (resnet50 training)."""
    scale = throughput["images_per_s"]["floor"] / RTX_3090["resnet50_train"]
    return {
        "rtx_3090": RTX_3090,
        "this_device": {"online": RTX_3090["online"] * scale, "cached": RTX_3090["cached"] * scale},
    }


def markdown(report: dict) -> str:
    lines = [f"# gpu-check: {report['device']}", ""]
    if report["rehearsal"]:
        lines += [
            "**Rehearsal**: no CUDA here; the same pipeline ran with tiny models on the CPU. No figure below is a GPU figure.",
            "",
        ]
    lines += [
        f"torch {report['torch']}, CUDA {report['cuda']}, driver {report.get('driver', 'n/a')}.",
        "",
    ]
    steps = [
        [name, "yes" if s["ok"] else f"NO (exit {s['exit']})", f"{s['seconds']:.0f}"]
        for name, s in report["steps"].items()
    ]
    lines += table_lines("step | ok | seconds", steps, left=2)
    if "throughput" in report:
        r = report["throughput"]["images_per_s"]
        memory = report["throughput"].get("peak_memory_gib", {})
        rows = [
            [name, f"{value:.0f}", *([f"{memory.get(name, 0):.1f}"] if memory else [])] for name, value in r.items()
        ]
        met = [
            [k, f"{t['ratio']:.2f} (>= {t['target']})", "yes" if t["met"] else "no"]
            for k, t in report["targets"].items()
        ]
        lines += ["", *table_lines("training step | images/s" + (" | peak GiB" if memory else ""), rows), ""]
        lines += table_lines("target | ratio | met", met)
        p = report["prediction"]["this_device"]
        lines += [
            "",
            f"Predicted from the RTX 3090 estimate scaled by this device's floor: online {p['online']:.0f}, "
            f"cached {p['cached']:.0f} images/s; measured online fast {r['online_fast']:.0f}, cached {r['cached']:.0f}.",
        ]
    if "image_folder" in report:
        crops = report["image_folder"]["crops_per_s"]
        lines += ["", *table_lines("with data loading | crops/s", [[k, f"{v['mean']:.0f}"] for k, v in crops.items()])]
    if "fit" in report:
        lines += ["", f"cli.py fit of the recipe's architectures: {report['fit']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results/gpu_check")
    parser.add_argument("--rehearsal", action="store_true", help="the CPU rehearsal even where CUDA is available")
    args = parser.parse_args(argv)
    rehearsal = args.rehearsal or not torch.cuda.is_available()
    settings = SETTINGS["rehearsal" if rehearsal else "gpu"]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    report = {**device_facts(rehearsal), "steps": {}}
    print(f"gpu-check on {report['device']}", flush=True)
    python = sys.executable

    run("gpu_tests", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"], args.out, report)
    if rehearsal:  # pytest exits 5 when every test is skipped (no CUDA): expected here
        report["steps"]["gpu_tests"]["ok"] = report["steps"]["gpu_tests"]["exit"] in (0, 5)
    if run(
        "throughput",
        [python, "benchmarks/throughput.py", *settings["throughput"], "--out", str(args.out / "throughput.json")],
        args.out,
        report,
    ):
        report["throughput"] = json.loads((args.out / "throughput.json").read_text())
        report["targets"], report["prediction"] = targets(report["throughput"]), prediction(report["throughput"])
    folder = args.out / "jpeg_folder"
    command = [python, "benchmarks/image_folder_throughput.py", *settings["folder"], "--folder", str(folder),
               "--cache-dir", str(args.out / "jpeg_cache"), "--out", str(args.out / "image_folder.json")]  # fmt: skip
    if rehearsal:
        command += ["--accelerator", "cpu"]
    if run("image_folder", command, args.out, report):
        report["image_folder"] = json.loads((args.out / "image_folder.json").read_text())
    if folder.is_dir():
        overlay, steps = fit_overlay(args.out, settings, folder), settings["fit"]["steps"]
        fit = [python, "cli.py", "fit", "--config", str(RECIPE), "--config", str(overlay)]
        first = run("fit_to_step_checkpoint", [*fit, f"--trainer.max_steps={steps // 2}"], args.out, report)
        resumed = first and run(
            "fit_resumed", [*fit, f"--trainer.max_steps={steps}", "--ckpt_path=last"], args.out, report
        )
        if resumed:
            last = args.out / "runs/resnet50_from_senet154+resnet152s/gpu_check/checkpoints/last.ckpt"
            step = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
            report["fit"] = f"{steps // 2} steps, step checkpoint, resumed to step {step} of {steps}"
            report["steps"]["fit_resumed"]["ok"] = step == steps
    else:  # no folder to fit on: the fit steps could not run
        report["steps"]["fit_to_step_checkpoint"] = {"ok": False, "exit": -1, "seconds": 0.0}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    (args.out / "report.md").write_text(markdown(report))
    print(markdown(report), flush=True)
    failed = [name for name, step in report["steps"].items() if not step["ok"]]
    if failed:
        print(f"gpu-check: failed steps: {', '.join(failed)} (logs in {args.out})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
