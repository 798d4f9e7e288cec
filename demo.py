"""The embedded default, end to end on real Fashion-MNIST, through cli.py and configs/fashion_mnist/.

Teachers (Classifier) -> student init (Classifier) -> MEAL V2 from that init -> hard-label baseline
from the same init for the same extra epochs [-> the paper's ablations]. Finished steps are skipped
and an interrupted one resumes from its last checkpoint, so re-running continues. Ends with a table
(Markdown + JSON) and a plot of val top-1 per epoch under ``results/<budget>/``.

    python demo.py                 # quick budget, under 15 minutes on 2 CPU cores
    python demo.py --budget full   # the README's accuracy benchmark, with ablations
    python demo.py --budget full --seed 1 --teachers-from results/full/seed0   # another seed, same teachers
    python demo.py --budget full --summary   # mean / std over the seeds run so far
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs" / "fashion_mnist"
RUNS = Path("runs") / "fashion_mnist"  # relative to the budget's results folder, as in the configs


@dataclass(frozen=True)
class Budget:
    """How long each stage trains; ``train_subset`` None = all 60,000 training images."""

    train_subset: Optional[int]
    teacher_epochs: int
    init_epochs: int
    extra_epochs: int
    ablations: bool
    trainer_args: tuple[str, ...] = ()


BUDGETS = {
    "quick": Budget(train_subset=12_000, teacher_epochs=4, init_epochs=4, extra_epochs=2, ablations=False),
    "full": Budget(train_subset=20_000, teacher_epochs=6, init_epochs=4, extra_epochs=2, ablations=True),
    "smoke": Budget(
        train_subset=64, teacher_epochs=1, init_epochs=1, extra_epochs=1, ablations=False,
        trainer_args=("--trainer.limit_val_batches=2", "--data.init_args.batch_size=16"),
    ),
}


@dataclass(frozen=True)
class Step:
    name: str  # = config file stem = run name under runs/fashion_mnist/
    label: str  # row name in the results table
    stage: str  # teacher | init | extra
    arch: str
    ablation: bool = False


STEPS = [
    Step("teacher_resnet14", "teacher: ResNet-14", "teacher", "cifar_resnet14"),
    Step("teacher_wrn_16_1", "teacher: WRN-16-1", "teacher", "cifar_wrn_16_1"),
    Step("student_init_resnet8", "student init (hard labels)", "init", "cifar_resnet8"),
    Step("baseline_resnet8_hard_labels", "baseline: init + hard labels", "extra", "cifar_resnet8"),
    Step("resnet8_from_resnet14+wrn_16_1", "MEAL V2 student", "extra", "cifar_resnet8"),
    Step("ablation_no_discriminator", "ablation: no discriminator", "extra", "cifar_resnet8", True),
    Step("ablation_hard_labels", "ablation: + hard labels in the loss", "extra", "cifar_resnet8", True),
    Step("ablation_weight_decay_1e-4", "ablation: weight decay 1e-4", "extra", "cifar_resnet8", True),
    Step("ablation_random_init", "ablation: random init", "extra", "cifar_resnet8", True),
    Step("ablation_single_teacher", "ablation: single best teacher", "extra", "cifar_resnet8", True),
]


@dataclass
class Pipeline:
    budget_name: str
    out: Path
    seed: int = 0
    data_dir: Optional[str] = None
    progress_bar: bool = True
    skip_ablations: bool = False
    teachers_from: Optional[Path] = None  # another results folder of this budget whose teachers are reused

    @property
    def budget(self) -> Budget:
        return BUDGETS[self.budget_name]

    def steps(self) -> list[Step]:
        return [s for s in STEPS if (self.budget.ablations and not self.skip_ablations) or not s.ablation]

    def epochs(self, step: Step) -> int:
        return {"teacher": self.budget.teacher_epochs, "init": self.budget.init_epochs, "extra": self.budget.extra_epochs}[step.stage]

    def run_dir(self, step: Step) -> Path:
        return self.out / RUNS / step.name / "main"

    def command(self, step: Step) -> list[str]:
        args = [
            sys.executable, str(ROOT / "cli.py"), "fit",
            "--config", str(CONFIGS / f"{step.name}.yaml"),
            f"--seed_everything={self.seed}",
            f"--trainer.max_epochs={self.epochs(step)}",
            *self.budget.trainer_args,
        ]
        if self.budget.train_subset is not None:
            args.append(f"--data.init_args.train_subset={self.budget.train_subset}")
        if self.data_dir:
            args.append(f"--data.init_args.data_dir={self.data_dir}")
        if self.progress_bar:
            args.append("--trainer.callbacks+=lightning.pytorch.callbacks.RichProgressBar")
        else:
            args.append("--trainer.enable_progress_bar=false")
        last = self.run_dir(step) / "checkpoints" / "last.ckpt"
        if last.is_file():
            args.append(f"--ckpt_path={last}")  # an interrupted run continues
        return args

    def reuse_teachers(self) -> None:
        """Copy finished teacher runs of the same budget from ``teachers_from`` (e.g. another seed's folder)."""
        import yaml

        for step in (s for s in self.steps() if s.stage == "teacher"):
            source = self.teachers_from / RUNS / step.name / "main"
            if (self.run_dir(step) / "done.json").is_file():
                continue
            if not (source / "done.json").is_file():
                raise SystemExit(f"--teachers-from {self.teachers_from}: no finished {step.name} there; run "
                                 f"`python demo.py --budget {self.budget_name} --out {self.teachers_from}` first.")
            config = yaml.safe_load((source / "config.yaml").read_text())
            trained = (config["trainer"]["max_epochs"], config["data"]["init_args"].get("train_subset"))
            if trained != (self.budget.teacher_epochs, self.budget.train_subset):
                raise SystemExit(f"--teachers-from {self.teachers_from}: {step.name} was trained for {trained[0]} epochs on "
                                 f"subset {trained[1]}, budget '{self.budget_name}' needs {self.budget.teacher_epochs} on "
                                 f"{self.budget.train_subset}; use a results folder of the same budget.")
            shutil.copytree(source, self.run_dir(step), dirs_exist_ok=True)

    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.teachers_from is not None:
            self.reuse_teachers()
        steps = self.steps()
        for index, step in enumerate(steps, 1):
            done = self.run_dir(step) / "done.json"
            if done.is_file():
                print(f"[{index}/{len(steps)}] {step.name}: done earlier, skipped", flush=True)
                continue
            print(f"[{index}/{len(steps)}] {step.name}: {self.epochs(step)} epochs", flush=True)
            started = time.perf_counter()
            subprocess.run(self.command(step), cwd=self.out, check=True)
            done.write_text(json.dumps({"seconds": round(time.perf_counter() - started, 1)}))
        return report(self)


# --------------------------------------------------------------------------------------------------
# Results: TensorBoard scalars -> table (Markdown + JSON) and plot
# --------------------------------------------------------------------------------------------------
def scalars(run_dir: Path, tag: str) -> list[float]:
    """Values of one scalar tag in a run's TensorBoard event files, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    for file in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            events += [(e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag)]
    by_step = {}
    for step, _, value in sorted(events, key=lambda e: (e[0], e[1])):
        by_step[step] = value  # a resumed run's later value wins
    return [by_step[s] for s in sorted(by_step)]


def images_per_second(arch: str, in_chans: int = 1, batch: int = 256, repeats: int = 5) -> float:
    """CPU inference throughput of one architecture at 28x28 (channels-last, no grad)."""
    import timm
    import torch

    import lightning_modules  # noqa: F401

    model = timm.create_model(arch, num_classes=10, in_chans=in_chans).eval().to(memory_format=torch.channels_last)
    images = torch.randn(batch, in_chans, 28, 28)
    with torch.no_grad():
        model(images)
        started = time.perf_counter()
        for _ in range(repeats):
            model(images)
    return batch * repeats / (time.perf_counter() - started)


def parameter_count(arch: str) -> int:
    import timm

    import lightning_modules  # noqa: F401

    return sum(p.numel() for p in timm.create_model(arch, num_classes=10, in_chans=1).parameters())


def report(pipeline: Pipeline) -> dict:
    steps = pipeline.steps()
    speed = {arch: images_per_second(arch) for arch in sorted({s.arch for s in steps})}
    params = {arch: parameter_count(arch) for arch in speed}
    rows, curves = [], {}
    for step in steps:
        curve = scalars(pipeline.run_dir(step), "val/top1")
        offset = pipeline.budget.init_epochs if step.stage == "extra" else 0
        curves[step.label] = (offset, curve)
        rows.append({"run": step.label, "config": f"configs/fashion_mnist/{step.name}.yaml", "epochs": pipeline.epochs(step),
                     "val_top1": 100 * curve[-1] if curve else None, "params": params[step.arch], "images_per_s": speed[step.arch]})
    teachers = [s for s in steps if s.stage == "teacher"]
    meal_dir = pipeline.run_dir(next(s for s in steps if s.name.startswith("resnet8_from")))
    ensemble = scalars(meal_dir, "val/ensemble_top1")
    rows.insert(len(teachers), {
        "run": "teacher ensemble (mean of probabilities)", "config": "", "epochs": None,
        "val_top1": 100 * ensemble[0] if ensemble else None,
        "params": sum(params[s.arch] for s in teachers),
        "images_per_s": 1 / sum(1 / speed[s.arch] for s in teachers),
    })
    result = {"budget": pipeline.budget_name, "seed": pipeline.seed, "train_subset": pipeline.budget.train_subset, "rows": rows}
    by_run = {r["run"]: r["val_top1"] for r in rows}
    meal = by_run["MEAL V2 student"]
    if meal is not None:
        result["meal_minus_baseline"] = meal - by_run["baseline: init + hard labels"]
        result["meal_minus_init"] = meal - by_run["student init (hard labels)"]
        result["ensemble_minus_meal"] = by_run["teacher ensemble (mean of probabilities)"] - meal
    (pipeline.out / "results.json").write_text(json.dumps(result, indent=2))
    (pipeline.out / "results.md").write_text(markdown_table(result))
    plot(curves, pipeline.out / "val_top1.png")
    print(markdown_table(result), flush=True)
    return result


def markdown_table(result: dict) -> str:
    subset = result["train_subset"] or 60000
    lines = [
        f"Fashion-MNIST, budget `{result['budget']}` ({subset} training images), seed {result['seed']}; "
        "val = the official 10,000 test images; images/s = CPU inference, batch 256.",
        "",
        "| run | epochs | val top-1 (%) | params | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        top1 = f"{row['val_top1']:.2f}" if row["val_top1"] is not None else "n/a"
        epochs = row["epochs"] if row["epochs"] is not None else ""
        lines.append(f"| {row['run']} | {epochs} | {top1} | {row['params'] / 1e3:.0f}K | {row['images_per_s']:.0f} |")
    if "meal_minus_baseline" in result:
        lines += ["", f"MEAL V2 - baseline: {result['meal_minus_baseline']:+.2f} points; MEAL V2 - init: "
                  f"{result['meal_minus_init']:+.2f}; ensemble - MEAL V2: {result['ensemble_minus_meal']:+.2f}."]
    return "\n".join(lines) + "\n"


def summarize(budget_dir: Path) -> dict:
    """Mean, spread and per-seed values of every row over the ``seed*/results.json`` of one budget."""
    results = sorted((json.loads(p.read_text()) for p in budget_dir.glob("seed*/results.json")), key=lambda r: r["seed"])
    if not results:
        raise SystemExit(f"No seed*/results.json under {budget_dir}: run `python demo.py --budget {budget_dir.name}` first.")
    rows = []
    for name in dict.fromkeys(row["run"] for result in results for row in result["rows"]):
        values = {r["seed"]: row["val_top1"] for r in results for row in r["rows"] if row["run"] == name and row["val_top1"] is not None}
        if values:
            rows.append({"run": name, **spread(list(values.values())), "by_seed": values})
    gaps = {r["seed"]: r["meal_minus_baseline"] for r in results if "meal_minus_baseline" in r}
    summary = {"budget": budget_dir.name, "seeds": [r["seed"] for r in results], "rows": rows,
               "meal_minus_baseline": {**spread(list(gaps.values())), "by_seed": gaps}}
    lines = [f"Fashion-MNIST, budget `{summary['budget']}`, seeds {summary['seeds']}: val top-1 (%), mean and "
             "sample standard deviation over the seeds that ran the row.", "",
             "| run | seeds | mean | std | per seed |", "|---|---:|---:|---:|---|"]
    for row in rows + ([{"run": "MEAL V2 - baseline (points)", **summary["meal_minus_baseline"]}] if gaps else []):
        form = "{:+.2f}" if row["run"].startswith("MEAL V2 -") else "{:.2f}"
        per_seed = ", ".join(f"s{seed} " + form.format(v) for seed, v in row["by_seed"].items())
        std = f"{row['std']:.2f}" if row["std"] is not None else ""
        lines.append(f"| {row['run']} | {row['n']} | {row['mean']:.2f} | {std} | {per_seed} |")
    (budget_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (budget_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return summary


def spread(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else None
    return {"n": n, "mean": mean, "std": std}


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for label, (offset, values) in curves.items():
        if values:
            axis.plot(range(offset + 1, offset + len(values) + 1), [100 * v for v in values], marker="o", label=label)
    axis.set_xlabel("epoch (student runs continue after the init's epochs)")
    axis.set_ylabel("val top-1 (%)")
    axis.set_title("Fashion-MNIST: teachers, student init, baseline, MEAL V2")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full" if os.environ.get("FULL") == "1" else "quick")
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SEED", "0")))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/<budget>/seed<seed>; with --summary the budget folder, default results/<budget>)")
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files (default: Debian's, else download)")
    parser.add_argument("--no-progress-bar", action="store_true")
    parser.add_argument("--skip-ablations", action="store_true", help="only teachers, init, baseline and MEAL V2")
    parser.add_argument("--teachers-from", type=Path, default=None,
                        help="reuse the finished teachers of another results folder of this budget (e.g. results/full/seed0)")
    parser.add_argument("--summary", action="store_true", help="only summarize the seeds already run for this budget")
    args = parser.parse_args(argv)
    if args.summary:
        return summarize((args.out or ROOT / "results" / args.budget).resolve())
    out = (args.out or ROOT / "results" / args.budget / f"seed{args.seed}").resolve()
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else None
    teachers_from = args.teachers_from.resolve() if args.teachers_from else None
    return Pipeline(args.budget, out, args.seed, data_dir, progress_bar=not args.no_progress_bar,
                    skip_ablations=args.skip_ablations, teachers_from=teachers_from).run()


if __name__ == "__main__":
    main()
