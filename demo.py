"""The embedded default: MEAL V2 on real Fashion-MNIST, distilling the project's model zoo, through cli.py.

The zoo (``zoo/fashion_mnist/``: two converged teachers, the student's converged init and the teachers'
soft labels on stored crops of all 60,000 training images, made by this project) is verified and
evaluated, then the same init is trained for the same epochs twice, side by side (one process per run,
the cores shared out): with MEAL V2 from the shipped soft labels, and on hard labels (the baseline).
Finished steps are skipped and an interrupted one resumes from its last checkpoint. Ends with a table
(Markdown + JSON) and a plot of val top-1 per epoch under ``results/demo/<precision>/seed<seed>/``.

    python demo.py                 # one seed (SEED=1 python demo.py, or --seed 1, for another)
    python demo.py --summary       # mean and std over the seeds run so far, paired by seed
    python experiments/method_table.py   # (make ablations) MEAL V2 beside KD, DKD, DIST and the paper's ablations
    python demo.py --rebuild-zoo   # retrain the zoo from configs/fashion_mnist/zoo/ (see README for the time)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import zoo
from console import table_lines
from errors import DemoError
from lightning_modules.hardware import cpu_description, fast_trainer_precision, machine

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs" / "fashion_mnist"
MEAL_CONFIG = CONFIGS / "resnet8_from_resnet20+wrn_16_2.yaml"
RUNS = Path("runs") / "fashion_mnist"  # relative to the seed's results folder, as in the configs
SMOKE_ARGS = (  # a few batches of the whole training set, so the shipped soft labels (made for all of it) fit
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=4",
    "--trainer.limit_val_batches=2",
    "--data.init_args.batch_size=16",
)


@dataclass(frozen=True)
class Step:
    name: str  # run name under runs/fashion_mnist/
    label: str  # row name in the results table
    configs: tuple[Path, ...]  # the recipe, then any overlays
    subcommand: str = "fit"
    args: tuple[str, ...] = ()  # further command-line settings (e.g. a held-out split, a temperature)


STEPS = [
    Step("zoo_evaluation", "zoo evaluation", (MEAL_CONFIG,), subcommand="validate"),
    Step("baseline_hard_labels", "baseline: init + hard labels", (CONFIGS / "baseline_resnet8_hard_labels.yaml",)),
    Step("meal_v2", "MEAL V2 student", (MEAL_CONFIG,)),
]


@dataclass
class Pipeline:
    out: Path
    seed: int = 0
    zoo_dir: Path = zoo.ZOO_DIR
    data_dir: Optional[str] = None
    precision: Optional[str] = None  # None: bf16-mixed where bf16 is faster than fp32 (hardware.py), else 32-true
    smoke: bool = False  # tiny runs for the tests

    def steps(self) -> list[Step]:
        return STEPS

    def run_dir(self, step: Step) -> Path:
        """Where a step records itself: a fit's run folder, or validate's own folder inside it."""
        run = self.out / RUNS / step.name / "main"
        return run if step.subcommand == "fit" else run / step.subcommand

    def command(self, step: Step) -> list[str]:
        args = zoo.runnable(zoo.cli_command(step.subcommand, step.configs))
        args += [
            f"--seed_everything={self.seed}",
            f"--trainer.precision={self.precision}",
            f"--trainer.logger.init_args.name={step.name}",
        ]
        args += step.args
        if self.smoke:
            args += SMOKE_ARGS
        if self.data_dir:
            args.append(f"--data.init_args.data_dir={self.data_dir}")
        args.append("--trainer.enable_progress_bar=false")  # runs share the console: no progress bars
        if step.subcommand == "fit":  # a line per epoch instead
            args += ["--trainer.callbacks+=EpochLine", "--trainer.enable_model_summary=false"]
        last = self.run_dir(step) / "checkpoints" / "last.ckpt"
        if step.subcommand == "fit" and last.is_file():
            args.append(f"--ckpt_path={last}")  # an interrupted run continues
        elif step.subcommand == "fit" and self.run_dir(step).is_dir():
            args.append("--overwrite=true")  # killed before its first checkpoint: nothing to keep
        return args

    def run(self) -> dict:
        started = time.perf_counter()
        manifests = self.prepare()
        print(
            f"MEAL V2 demo, seed {self.seed}, precision {self.precision} ({os.cpu_count()} cores, CPU: "
            f"{cpu_description()}), zoo {self.zoo_dir} verified: "
            + ", ".join(f"{m['name']} {m['val_top1']:.2f}%" for m in manifests),
            flush=True,
        )
        steps = [s for s in self.steps() if not (self.run_dir(s) / "done.json").is_file()]
        for step in self.steps():
            if step not in steps:
                print(f"{step.name}: done earlier, skipped", flush=True)
        # All at once, one thread each: the short evaluation shares the cores with the fits instead of delaying them.
        run_side_by_side([(self, s) for s in steps], slots=len(steps))
        if STEPS[0] in steps:
            print(zoo_line(self), flush=True)
        result = report(self, manifests, round(time.perf_counter() - started, 1))
        print(f"demo finished in {result['seconds']:.0f} s; results in {self.out}", flush=True)
        print(f"curves and the HParams table: tensorboard --logdir {self.out / RUNS}", flush=True)
        return result

    def prepare(self) -> list[dict]:
        """Verify the zoo, settle the precision and link the zoo into the results folder; the zoo's manifests.
        A results folder holds one precision's runs: runs made in another are never reused or relabelled."""
        manifests = zoo.verify(self.zoo_dir)
        self.precision = self.precision or fast_trainer_precision()
        marker = self.out / "precision.txt"
        if marker.is_file() and (made := marker.read_text().strip()) != self.precision:
            raise DemoError(
                f"{self.out} holds runs made in {made}, not {self.precision}: give another --out, or --precision {made}."
            )
        self.out.mkdir(parents=True, exist_ok=True)
        marker.write_text(self.precision)
        zoo.link(self.zoo_dir, self.out)
        return manifests


def run_side_by_side(jobs: list[tuple[Pipeline, Step]], slots: Optional[int] = None) -> None:
    """Run the steps side by side, as many as there are cores (or ``slots``), sharing the cores' threads out among them.

    A step already recorded as done (``done.json``) is skipped. A run's per-epoch lines go to the console, its log
    (warnings included) to ``<out>/logs/<step>.log``."""
    jobs = [(p, s) for p, s in jobs if not (p.run_dir(s) / "done.json").is_file()]
    cores = os.cpu_count() or 1
    slots = max(1, min(len(jobs), slots or cores))
    threads = str(max(1, cores // slots))
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    pending, running = deque(jobs), {}
    # Stopped by SIGTERM (a scheduler, `kill`): unwind through `finally`, so the runs are stopped too and save
    # their place (each run's own SIGTERM handling writes last.ckpt; the next start resumes it).
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        while pending or running:
            while pending and len(running) < slots:
                pipeline, step = pending.popleft()
                (pipeline.out / "logs").mkdir(parents=True, exist_ok=True)
                log = open(pipeline.out / "logs" / f"{step.name}.log", "w")  # noqa: SIM115 (closed when it ends)
                earlier = zoo.logged_seconds(pipeline.run_dir(step))  # its earlier starts (resumed or begun again)
                process = subprocess.Popen(pipeline.command(step), cwd=pipeline.out, env=environment, stderr=log)
                running[process] = (pipeline, step, log, time.perf_counter() - earlier, earlier)
                print(f"{step.name}: {step.subcommand} on {threads} thread(s), log {log.name}", flush=True)
            for process, (pipeline, step, log, began, earlier) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[process]
                if process.returncode != 0:
                    raise DemoError(f"{step.name} failed (exit {process.returncode}):\n{tail(Path(log.name))}")
                seconds = round(time.perf_counter() - began, 1)
                done = {"seconds": seconds, "machine": machine(), "threads": int(threads)}
                done |= {"earlier_starts_seconds": round(earlier, 1)} if earlier else {}
                (pipeline.run_dir(step) / "done.json").write_text(json.dumps(done))
                print(f"{step.name}: finished in {seconds:.0f} s", flush=True)
            time.sleep(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
        for process in running:
            process.terminate()
        for process, (_, _, log, *_) in running.items():
            process.wait()
            log.close()


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def zoo_line(pipeline: Pipeline) -> str:
    evaluation = zoo_evaluation(pipeline)
    return "zoo on the 10,000 test images: " + ", ".join(
        f"{k} {v:.2f}%" for k, v in evaluation.items() if v is not None
    )


def zoo_evaluation(pipeline: Pipeline) -> dict[str, Optional[float]]:
    """Val top-1 (%) of each teacher, the ensemble and the student init, from the validate run."""
    folder = pipeline.run_dir(STEPS[0])
    teachers = [m for m in zoo.MODELS if m.role == "teacher"]
    tags = {m.label: f"val/teacher{k}_top1" for k, m in enumerate(teachers)}
    tags |= {ENSEMBLE: "val/ensemble_top1", INIT: "val/top1"}
    values = zoo.read_scalar_tags(folder, list(tags.values()))  # the event files read once
    return {label: 100 * values[tag][-1] if values[tag] else None for label, tag in tags.items()}


ENSEMBLE, INIT = "teacher ensemble (mean of probabilities)", "student init (hard labels)"  # rows of the zoo


# --------------------------------------------------------------------------------------------------
# Results: TensorBoard scalars -> table (Markdown + JSON) and plot
# --------------------------------------------------------------------------------------------------
def report(pipeline: Pipeline, verified: list[dict], seconds: Optional[float] = None) -> dict:
    manifests = {m["name"]: m for m in verified}
    evaluation = zoo_evaluation(pipeline)
    arch = {m.label: manifests[m.name] for m in zoo.MODELS}
    teachers = [m for m in zoo.MODELS if m.role == "teacher"]
    rows = [
        {
            "run": label,
            "epochs": None,
            "val_top1": value,
            "seconds": None,
            "params": arch[label]["parameters"]
            if label in arch
            else sum(manifests[m.name]["parameters"] for m in teachers),
        }
        for label, value in evaluation.items()
    ]
    curves = {}
    student_params = manifests["student_init_resnet8"]["parameters"]
    for step in pipeline.steps()[1:]:
        scalars = zoo.read_scalar_tags(pipeline.run_dir(step), ["val/top1", "val/agreement", "val/loss", "val/ece"])
        curve = [100 * v for v in scalars["val/top1"]]
        curves[step.label] = curve
        done = pipeline.run_dir(step) / "done.json"
        rows.append(
            {
                "run": step.label,
                "epochs": len(curve),
                "val_top1": curve[-1] if curve else None,
                "agreement": 100 * scalars["val/agreement"][-1] if scalars["val/agreement"] else None,
                "nll": scalars["val/loss"][-1] if scalars["val/loss"] else None,
                "ece": 100 * scalars["val/ece"][-1] if scalars["val/ece"] else None,
                "params": student_params,
                "seconds": json.loads(done.read_text())["seconds"] if done.is_file() else None,
            }
        )
    result = {
        "seed": pipeline.seed,
        "precision": pipeline.precision,
        "machine": machine(),
        "seconds": seconds,
        "rows": rows,
        **gaps({r["run"]: r["val_top1"] for r in rows}),
    }
    exports = {
        "student init (hard labels)": pipeline.zoo_dir / "student_init_resnet8",
        **{step.label: pipeline.run_dir(step) / EXPORTS[step.name] / "last" for step in pipeline.steps()[1:3]},
    }
    result["per_class"] = per_class(exports, pipeline.data_dir, pipeline.out / "confusion_matrix.png")
    (pipeline.out / "results.json").write_text(json.dumps(result, indent=2))
    (pipeline.out / "results.md").write_text(markdown_table(result) + "\n" + per_class_table(result["per_class"]))
    plot(
        {label: [values] for label, values in curves.items()},
        evaluation,
        pipeline.out / "val_top1.png",
        "Fashion-MNIST: MEAL V2 vs hard labels from the same init",
        "epoch of training on from the zoo's student init",
    )
    print(markdown_table(result), flush=True)
    return result


EXPORTS = {"baseline_hard_labels": "model", "meal_v2": "student"}  # Classifier, MealV2


def per_class(exports: dict[str, Path], data_dir: Optional[str], confusion_png: Path) -> dict:
    """Val top-1 (%) per class of each exported network on the 10,000 test images, and the last one's confusion matrix."""
    import timm
    import torch
    from torchmetrics.classification import MulticlassConfusionMatrix

    import lightning_modules  # noqa: F401  (registers cifar_resnet8 for timm's local-dir loading)
    from datamodules import FashionMNISTData

    data = FashionMNISTData(**({"data_dir": data_dir} if data_dir else {}), batch_size=1000)
    data.setup("test")
    names = data.class_names
    result, matrix = {"classes": names}, None
    for label, folder in exports.items():
        model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        matrix = MulticlassConfusionMatrix(len(names))
        with torch.no_grad():
            for images, labels in data.test_dataloader():
                matrix.update(model(images).argmax(-1), labels)
        counts = matrix.compute()
        result[label] = [round(100 * float(counts[k, k] / counts[k].sum()), 2) for k in range(len(names))]
    plot_confusion(counts, names, list(exports)[-1], confusion_png)
    return result


def per_class_table(per_class_result: dict) -> str:
    runs = [k for k in per_class_result if k != "classes"]
    rows = [
        [name, *(f"{per_class_result[run][k]:.1f}" for run in runs)]
        for k, name in enumerate(per_class_result["classes"])
    ]
    return (
        "\n".join(["Val top-1 (%) per class, last epoch:", "", *table_lines(" | ".join(["class", *runs]), rows)]) + "\n"
    )


def plot_confusion(counts, names: list[str], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = 100 * counts.float() / counts.sum(dim=1, keepdim=True).clamp(min=1)
    figure, axis = plt.subplots(figsize=(7, 6))
    image = axis.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=100)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    for row in range(len(names)):
        for column in range(len(names)):
            value = float(rates[row, column])
            if value >= 1:
                color = "white" if value > 60 else "black"
                axis.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=7, color=color)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"{label}: % of each true class (10,000 test images)")
    figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def gaps(by_run: dict[str, Optional[float]]) -> dict:
    """MEAL V2 against the baseline and the init, and the share of the init -> ensemble gap it closes."""
    meal, baseline = by_run.get("MEAL V2 student"), by_run.get("baseline: init + hard labels")
    init, ensemble = by_run.get(INIT), by_run.get(ENSEMBLE)
    if None in (meal, baseline, init, ensemble):
        return {}
    return {
        "meal_minus_baseline": meal - baseline,
        "meal_minus_init": meal - init,
        "gap_closed": (meal - init) / (ensemble - init) if ensemble != init else None,
    }


def markdown_table(result: dict) -> str:
    lines = [
        f"Fashion-MNIST, seed {result['seed']}, precision {result['precision']}, {result['machine']}"
        + (f", this run {result['seconds'] / 60:.1f} min" if result.get("seconds") else "")
        + ": the zoo (trained on all 60,000 training "
        "images) and the student trained on from its init; val top-1 on the official 10,000 test images, last epoch.",
        "",
    ]

    header = "run | epochs | val top-1 (%) | agreement with the ensemble (%) | NLL | ECE (%) | params | wall (s)"
    rows = [
        [row["run"], number(row["epochs"], "{}"), number(row["val_top1"], missing="n/a"), number(row.get("agreement")),
         number(row.get("nll"), "{:.3f}"), number(row.get("ece")), f"{row['params'] / 1e3:.0f}K",
         number(row.get("seconds"), "{:.0f}")]
        for row in result["rows"]
    ]  # fmt: skip
    lines += table_lines(header, rows)
    if "meal_minus_baseline" in result:
        closed = f"{100 * result['gap_closed']:.0f}%" if result["gap_closed"] is not None else "n/a"
        lines += [
            "",
            f"MEAL V2 - baseline: {number(result['meal_minus_baseline'], signed=True)} points; MEAL V2 - init: "
            f"{number(result['meal_minus_init'], signed=True)}; share of the init -> ensemble gap closed: {closed}.",
        ]
    lines += [
        "",
        "This is one seed; a seed moves the margin by about as much as the margin itself. MEAL V2 beside Hinton KD, DKD, "
        "DIST and the paper's ablations over 5 seeds with 95 % intervals: README, `make ablations`.",
    ]
    return "\n".join(lines) + "\n"


def summarize(results_dir: Path) -> dict:
    """Mean, 95 % t-interval and per-seed values of every row and of the paired gaps over ``seed*/results.json``."""
    results = sorted(
        (json.loads(p.read_text()) for p in results_dir.glob("seed*/results.json")), key=lambda r: r["seed"]
    )
    if not results:
        raise SystemExit(f"No seed*/results.json under {results_dir}: run `python demo.py` first.")
    rows = []
    for name in dict.fromkeys(row["run"] for result in results for row in result["rows"]):
        values = {
            r["seed"]: row["val_top1"]
            for r in results
            for row in r["rows"]
            if row["run"] == name and row["val_top1"] is not None
        }
        if values:
            rows.append({"run": name, **interval(list(values.values())), "by_seed": values})
    paired = {}
    for key, label, scale in (
        ("meal_minus_baseline", "MEAL V2 - baseline (points)", 1),
        ("meal_minus_init", "MEAL V2 - init (points)", 1),
        ("gap_closed", "share of init -> ensemble gap closed (%)", 100),
    ):
        values = {r["seed"]: scale * r[key] for r in results if r.get(key) is not None}
        if values:
            paired[key] = {"run": label, **interval(list(values.values())), "by_seed": values}
    summary = {"seeds": [r["seed"] for r in results], "rows": rows, **paired}
    lines = [
        f"Fashion-MNIST demo, seeds {summary['seeds']}: val top-1 (%) at the last epoch, mean ± 95 % t-interval over "
        "the seeds; differences paired by seed (same init, same batches).",
        "",
    ]
    table = []
    for row in rows + list(paired.values()):
        signed = "(points)" in row["run"]
        per_seed = ", ".join(f"s{seed} {number(v, signed=signed)}" for seed, v in row["by_seed"].items())
        table.append([row["run"], row["n"], number(row["mean"], signed=signed), number(row["half_width"]), per_seed])
    lines += table_lines("run | seeds | mean | ± 95 % | per seed", table)
    (results_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (results_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return summary


# 97.5 % quantiles of Student's t for 1..30 degrees of freedom (two-sided 95 % intervals).
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def interval(values: list[float]) -> dict:
    """Mean and its 95 % t-interval (half-width None with fewer than 2 values)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return {"n": n, "mean": mean, "half_width": None}
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return {"n": n, "mean": mean, "half_width": T_975[min(n - 1, len(T_975)) - 1] * sd / math.sqrt(n)}


def number(value: Optional[float], form: str = "{:.2f}", signed: bool = False, missing: str = "") -> str:
    """``value`` as ``form`` writes it, with its sign where ``signed`` (none where it rounds to 0), or ``missing``."""
    if value is None:
        return missing
    text = (form.replace("{:", "{:+") if signed else form).format(value)
    return text.lstrip("+-") if float(text) == 0 else text


def plot(
    curves: dict[str, list[list[float]]], lines: dict[str, Optional[float]], path: Path, title: str, xlabel: str
) -> None:
    """Val top-1 per epoch: each curve's mean over its seeds (shaded from the lowest to the highest seed where there
    are several) and grey lines at the reference points (the zoo's evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figure, axis = plt.subplots(figsize=(8, 5))
    for label, seeds in curves.items():
        if seeds and seeds[0]:
            values = np.array(seeds)
            epochs = range(1, values.shape[1] + 1)
            (line,) = axis.plot(epochs, values.mean(0), marker="o", markersize=3, label=label)
            if len(values) > 1:
                axis.fill_between(epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
    for (label, value), style in zip(lines.items(), (":", "-.", "--", "-"), strict=False):
        if value is not None:
            axis.axhline(value, color="grey", linestyle=style, linewidth=1, label=f"{label} ({value:.2f})")
    axis.set_xlabel(xlabel)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_ylabel("val top-1 (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def default_results(precision: str) -> Path:
    """Each precision's runs in a folder of their own: ``results/demo/<precision>/seed<seed>``."""
    return ROOT / "results" / "demo" / precision


def main(argv: Optional[list[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "0")))
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default results/demo/<precision>/seed<seed>; with --summary the folder holding seed*/)",
    )
    parser.add_argument(
        "--zoo", type=Path, default=zoo.ZOO_DIR, help="the model zoo folder (default zoo/fashion_mnist)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's, else download)"
    )
    parser.add_argument(
        "--precision",
        default=None,
        help="Trainer precision (default: bf16-mixed where bf16 measured faster than fp32: CPUs with AMX, AMD CPUs "
        "with AVX-512-BF16, CUDA; else 32-true)",
    )
    parser.add_argument("--summary", action="store_true", help="only summarize the seeds already run")
    parser.add_argument(
        "--rebuild-zoo", action="store_true", help="train the zoo from its configs and export it into --zoo"
    )
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny runs, for the tests
    parser.add_argument("--no-progress-bar", action="store_true", help="--rebuild-zoo: no progress bars")
    args = parser.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    precision = args.precision or fast_trainer_precision()
    if args.summary:
        return summarize((args.out or default_results(precision)).resolve())
    if args.rebuild_zoo:
        work = (args.out or ROOT).resolve()
        extra = (SMOKE_ARGS if args.smoke else ()) + (
            ("--trainer.enable_progress_bar=false",) if args.no_progress_bar else ()
        )
        return zoo.rebuild(args.zoo.resolve(), work, extra, data_dir)
    out = (args.out or default_results(precision) / f"seed{args.seed}").resolve()
    try:
        return Pipeline(out, args.seed, args.zoo.resolve(), data_dir, precision, args.smoke).run()
    except (zoo.ZooError, DemoError) as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
