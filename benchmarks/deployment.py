"""What distillation buys at inference: accuracy, size and speed of the demo's teachers, their ensemble and the student.

For each network (the zoo's ResNet-20 and WRN-16-2 teachers, their ensemble = both run and their
probabilities averaged, the ResNet-8 student): val top-1 on the 10,000 Fashion-MNIST test images (teachers
and ensemble from the zoo's manifests, the MEAL V2 student's mean ± 95 % interval over the demo's seeds from its
summary), parameters, and inference images/s at batch 1 and batch 64 in PyTorch (fp32, eval, no grad) and
in ONNX Runtime (CPU provider, the exports' model.onnx, idle threads not spinning), with ``--threads``
intra-op threads for both.
Median of ``--repeats`` timed rounds; writes JSON and prints a Markdown table.

    python benchmarks/deployment.py                              # after `make demo` (and `python demo.py --summary`)
    python benchmarks/deployment.py --device cuda                # PyTorch rows on a GPU (ONNX Runtime stays on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reporting import device_name, save_and_print, synchronize  # noqa: E402

import demo  # noqa: E402
import lightning_modules  # noqa: E402,F401  (registers the small-image backbones for local-dir loading)
import zoo  # noqa: E402
from console import table_lines  # noqa: E402
from lightning_modules.hardware import cpu_description, fast_trainer_precision  # noqa: E402
from models.onnx_export import export_folder_onnx  # noqa: E402


def images_per_second(run, batch: torch.Tensor, device: torch.device, repeats: int, seconds: float = 0.5) -> float:
    """Median images/s of ``run(batch)`` over ``repeats`` rounds of at least ``seconds`` each (after a warm-up)."""
    run(batch)
    synchronize(device)
    rates = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run(batch)
            count += 1
        synchronize(device)
        rates.append(count * len(batch) / (time.perf_counter() - start))
    return statistics.median(rates)


def onnx_runner(paths: list[Path], threads: int):
    """ONNX Runtime sessions run one after another, probabilities averaged (one path: the network alone)."""
    import numpy as np
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # idle threads of one session would spin against the next one's (an ensemble runs several): no spinning, in every row
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = [onnxruntime.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]

    def run(batch: torch.Tensor):
        logits = [s.run(None, {"images": batch.numpy()})[0] for s in sessions]
        probabilities = [np.exp(z - z.max(-1, keepdims=True)) for z in logits]
        return sum(p / p.sum(-1, keepdims=True) for p in probabilities) / len(probabilities)

    return run


def torch_runner(models: list[torch.nn.Module]):
    def run(batch: torch.Tensor):
        with torch.no_grad():
            return torch.stack([m(batch).softmax(-1) for m in models]).mean(0)

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=zoo.ZOO_DIR)
    parser.add_argument(
        "--demo",
        type=Path,
        default=None,
        help="demo results (summary.json, seed*/; default: the demo's for this machine)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one timed round")
    parser.add_argument("--out", type=Path, default=ROOT / "results/deployment.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import timm

    manifests = {m["name"]: m for m in zoo.verify(args.zoo)}
    summary = (args.demo or demo.default_results(fast_trainer_precision())) / "summary.json"
    student_score = None
    if summary.is_file():
        row = next((r for r in json.loads(summary.read_text())["rows"] if r["run"] == "MEAL V2 student"), None)
        student_score = (row["mean"], row["half_width"], row["n"]) if row else None
    networks = {
        "teacher: ResNet-20": ["teacher_resnet20"],
        "teacher: WRN-16-2": ["teacher_wrn_16_2"],
        "teacher ensemble (both, mean of probabilities)": ["teacher_resnet20", "teacher_wrn_16_2"],
        "MEAL V2 student: ResNet-8": ["student_init_resnet8"],  # the student's architecture: its speed
    }
    with tempfile.TemporaryDirectory() as work:
        onnx_files = {}
        for name in {n for names in networks.values() for n in names}:
            folder = Path(work) / name
            folder.mkdir()
            for file in ("model.safetensors", "config.json"):
                (folder / file).write_bytes((args.zoo / name / file).read_bytes())
            onnx_files[name] = export_folder_onnx(folder)
        models = {
            name: timm.create_model(f"local-dir:{args.zoo / name}", pretrained=True).float().eval().to(device)
            for name in onnx_files
        }
        rows = []
        for label, names in networks.items():
            if label.startswith("MEAL V2"):
                top1 = student_score
            elif len(names) > 1:
                cache = json.loads((args.zoo / zoo.SOFT_LABELS / "manifest.json").read_text())
                top1 = (cache["ensemble_val_top1"]["top1"], None, None)  # checked before the cache was made
            else:
                top1 = (manifests[names[0]]["val_top1"], None, None)
            row = {"network": label, "val_top1": top1, "parameters": sum(manifests[n]["parameters"] for n in names)}
            for batch_size in (1, 64):
                batch = torch.randn(batch_size, 1, 28, 28)
                row[f"torch_b{batch_size}"] = images_per_second(
                    torch_runner([models[n] for n in names]), batch.to(device), device, args.repeats, args.seconds
                )
                row[f"onnx_b{batch_size}"] = images_per_second(
                    onnx_runner([onnx_files[n] for n in names], args.threads),
                    batch,
                    torch.device("cpu"),
                    args.repeats,
                    args.seconds,
                )
            rows.append(row)
    ensemble, student = rows[2], rows[3]
    report = {
        "device": device_name(device),
        "cpu": cpu_description(),
        "threads": args.threads,
        "torch": torch.__version__,
        "rows": rows,
        "student_speedup_over_ensemble": {
            k: student[k] / ensemble[k] for k in student if k.startswith(("torch", "onnx"))
        },
    }
    return save_and_print(report, args.out, markdown)


def markdown(report: dict) -> str:
    lines = [
        f"Inference on {report['device']} ({report['cpu']}), {report['threads']} threads, torch {report['torch']}; "
        "images/s, median of the timed rounds; val top-1 on the 10,000 Fashion-MNIST test images.",
        "",
    ]
    rows = []
    for row in report["rows"]:
        top1, half, n = row["val_top1"] or (None, None, None)
        score = (
            "n/a (run the demo)"
            if top1 is None
            else f"{top1:.2f}" + (f" ± {half:.2f} ({n} seeds)" if half is not None else "")
        )
        speeds = [f"{row[k]:,.0f}" for k in ("torch_b1", "torch_b64", "onnx_b1", "onnx_b64")]
        rows.append([row["network"], score, f"{row['parameters'] / 1e3:.0f}K", *speeds])
    header = "network | val top-1 (%) | params | PyTorch b1 | PyTorch b64 | ONNX Runtime b1 | ONNX Runtime b64"
    lines += table_lines(header, rows)
    speedup = report["student_speedup_over_ensemble"]
    lines += [
        "",
        "The student over the ensemble: "
        + ", ".join(
            f"{k.replace('_b', ' batch ').replace('torch', 'PyTorch').replace('onnx', 'ONNX Runtime')} {v:.1f}x"
            for k, v in speedup.items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
