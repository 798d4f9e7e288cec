"""Does MEAL V2 work? It, beside the hard-label baselines, the other distillation methods, consistent teaching and
the paper's ablations, on the embedded default (``make ablations``).

Every row gets the same budget: the zoo's ResNet-8 init, 7 epochs (``schedules/table_7_epochs.yaml``), cosine from lr
0.01, batch 128, the same ensemble and, where the run is cached, the same stored crops (plain or mixed); each run's
last epoch on the 10,000 test images, no selection on them. A row is any config with a ``# method table: <label>; <n>
seeds`` header (the two recipes, the overlays in baselines/, methods/ and ablations/); a header's ``; choose
<argument> from <values>`` has that objective argument chosen first on held-out training images (``--held-out`` of
the 60,000, ``data.val_size``). Runs go side by side as in the demo; finished runs are skipped and an interrupted one
resumes. The table gives each row's mean with a 95 % t-interval over seeds and, paired by seed, MEAL V2's lead over
it. The patient rows (baseline, MEAL V2, function matching, MEAL V2 with consistent teaching, and MEAL V2 with a
ResNet-20 student from its own init) are a command of their own: 30 epochs over 3 seeds, reporting the share of the
init -> ensemble gap each closes. ``table.json`` holds every finished run of both.

    python experiments/method_table.py             # the 7-epoch table (results/method_table/): see README for the time
    python experiments/method_table.py --patient   # the 30-epoch rows, into the same results
    python experiments/method_table.py --summary   # only the table and the plot from the runs done so far
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import demo  # noqa: E402
import zoo  # noqa: E402
from console import table_lines  # noqa: E402
from demo import CONFIGS, MEAL_CONFIG, Pipeline, Step, interval, number  # noqa: E402
from lightning_modules.hardware import machine  # noqa: E402

BASELINE_CONFIG = CONFIGS / "baseline_resnet8_hard_labels.yaml"
METHODS, ABLATIONS, BASELINES = CONFIGS / "methods", CONFIGS / "ablations", CONFIGS / "baselines"
PATIENT = CONFIGS / "schedules" / "patient_30_epochs.yaml"
BUDGET = CONFIGS / "schedules" / "table_7_epochs.yaml"  # the table's budget; the patient rows: PATIENT
OBJECTIVE = "--model.init_args.objective.init_args"  # where a chosen argument goes
PUBLISHED, PUBLISHED_PLOT, README = (
    ROOT / "docs" / "method_table.json",
    ROOT / "docs" / "method_table.png",
    ROOT / "README.md",
)
BEGIN = "<!-- generated from docs/method_table.json by: python experiments/method_table.py --summary --publish -->"
END = "<!-- end of the generated table -->"
TAGS = {"top1": "val/top1", "agreement": "val/agreement", "nll": "val/loss", "ece": "val/ece"}
# A config's header line that makes it a row, e.g. "# method table: Hinton KD; 5 seeds; choose temperature from 1, 2, 4"
HEADER = re.compile(
    r"^# method table: (?P<label>[^;\n]+); (?P<seeds>\d+) seeds?(?:; choose (?P<arg>\w+) from (?P<values>[^\n]+))?$",
    re.M,
)


@dataclass(frozen=True)
class Row:
    key: str  # run name
    label: str
    configs: tuple[Path, ...]
    seeds: int  # how many seeds (0, 1, ...) the full table runs
    choice: Optional[tuple[str, tuple[float, ...]]] = (
        None  # an objective argument chosen on held-out images, from values
    )


def find_rows() -> list[Row]:
    """Every config whose header names it a row: the two recipes, the overlays on the baseline's in baselines/, then
    those on MEAL V2's in methods/ and ablations/. A new method's overlay is a new row."""
    rows = []
    overlays = [*sorted(BASELINES.glob("*.yaml")), *sorted(METHODS.glob("*.yaml")), *sorted(ABLATIONS.glob("*.yaml"))]
    for path in [BASELINE_CONFIG, MEAL_CONFIG, *overlays]:
        if not (found := HEADER.search(path.read_text())):
            continue
        key = {BASELINE_CONFIG: "baseline", MEAL_CONFIG: "meal_v2"}.get(path)
        key = key or ("ablation_" if path.parent == ABLATIONS else "") + path.stem
        choice = (found["arg"], tuple(float(v) for v in found["values"].split(","))) if found["arg"] else None
        recipe = BASELINE_CONFIG if path.parent == BASELINES else MEAL_CONFIG
        configs = (path,) if path in (BASELINE_CONFIG, MEAL_CONFIG) else (recipe, path)
        rows.append(Row(key, found["label"].strip(), configs, int(found["seeds"]), choice))
    return rows


ROWS = find_rows()
REFERENCE = "meal_v2"  # the row every other is paired with
PAIR = ("baseline", "meal_v2")  # run first, over all their seeds
PATIENT_ROWS = ("baseline", "meal_v2", "function_matching", "meal_v2_consistent")  # also over 30 epochs
# The capacity row, over 30 epochs only: MEAL V2 with a wider student, its gap measured from that student's own init
WIDER = Row("meal_v2_resnet20", "MEAL V2, ResNet-20 student", (MEAL_CONFIG, CONFIGS / "students" / "resnet20.yaml"), 3)
OWN_INIT = {f"patient_{WIDER.key}": "teacher: ResNet-20"}  # patient runs from another init: the zoo row it is
PATIENT_SEEDS = 3


@dataclass
class Table:
    out: Path
    seeds: int = 5  # at most this many seeds per row (each row's own count caps it)
    held_out: int = 10_000
    zoo_dir: Path = zoo.ZOO_DIR
    data_dir: Optional[str] = None
    precision: Optional[str] = None
    smoke: bool = False
    patient: bool = False  # the 30-epoch rows instead of the 7-epoch table
    rows: tuple[str, ...] = (*(row.key for row in ROWS), WIDER.key)  # which rows to run (keys)

    def selected(self) -> list[Row]:
        return [row for row in ROWS if row.key in self.rows]

    def pipeline(self, part: str, seed: int = 0) -> Pipeline:
        return Pipeline(self.out / part, seed, self.zoo_dir, self.data_dir, self.precision, self.smoke)

    def selection_steps(self, row: Row) -> list[Step]:
        """The row at each value of its choice, validated on held-out training images."""
        arg, values = row.choice
        held_out = f"--data.init_args.val_size={self.held_out}"
        return [
            Step(
                f"{row.key}_{arg}{v:g}",
                f"{row.label}, {arg}={v:g}",
                (*row.configs, BUDGET),
                args=(f"{OBJECTIVE}.{arg}={v}", held_out),
            )
            for v in values
        ]

    def held_out_runs(self, row: Row) -> dict[float, dict]:
        """The finished held-out runs of the row's choice by value: their last values (top-1 on held-out images)."""
        pipeline = self.pipeline("selection")
        found = {
            v: self.last_values(pipeline, step)
            for v, step in zip(row.choice[1], self.selection_steps(row), strict=True)
        }
        return {v: values for v, values in found.items() if values is not None}

    def chosen(self, row: Row, scores: Optional[dict[float, float]] = None) -> float:
        """The value with the best last-epoch top-1 on the held-out images (ties: the first listed)."""
        scores = {v: run["top1"] for v, run in self.held_out_runs(row).items()} if scores is None else scores
        if len(scores) < len(row.choice[1]):
            raise demo.DemoError(
                f"{row.key}: the held-out runs of {row.choice[0]} are not all finished: run them first."
            )
        return max(row.choice[1], key=lambda v: (scores[v], -row.choice[1].index(v)))

    def row_step(self, row: Row, chosen: Optional[dict[str, float]] = None) -> Step:
        args = (f"{OBJECTIVE}.{row.choice[0]}={chosen[row.key]}",) if row.choice and row.key in (chosen or {}) else ()
        return Step(row.key, row.label, (*row.configs, BUDGET), args=args)

    def jobs(self, chosen: dict[str, float]) -> list[tuple[Pipeline, Step]]:
        """Most telling first, so a table stopped early has whole seeds of what matters most: the baseline and MEAL
        V2 over all their seeds, the other methods over 3, the ablations over 1, then 3, then the rest."""
        pair = set(PAIR)

        def phase(row: Row, seed: int) -> int:
            if row.key in pair:
                return 0
            if row.seeds == max(r.seeds for r in ROWS):
                return 1 if seed < 3 else 4
            return 2 if seed == 0 else 3

        order = [(row, seed) for row in self.selected() for seed in range(min(row.seeds, self.seeds))]
        order.sort(key=lambda item: (phase(*item), item[1], ROWS.index(item[0])))
        return [(self.pipeline(f"seed{seed}", seed), self.row_step(row, chosen)) for row, seed in order]

    def patient_steps(self) -> list[Step]:
        rows = [*({row.key: row for row in ROWS}[key] for key in PATIENT_ROWS), WIDER]
        return [Step(f"patient_{row.key}", f"{row.label}, 30 epochs", (*row.configs, PATIENT)) for row in rows]

    def patient_jobs(self, selected: bool = False) -> list[tuple[Pipeline, Step]]:
        """The patient rows (``selected``: those among ``rows``), seed by seed (seed 0 of all first)."""
        steps = [s for s in self.patient_steps() if not selected or s.name.removeprefix("patient_") in self.rows]
        seeds = range(min(PATIENT_SEEDS, self.seeds))
        return [(self.pipeline(f"patient_seed{seed}", seed), step) for seed in seeds for step in steps]

    def run(self) -> dict:
        """The 7-epoch table, each declared choice made first on held-out images; with ``patient``, the 30-epoch
        rows instead. Either way the zoo's evaluation (the init and the ensemble the gap is measured between)."""
        zoo_pipeline = self.pipeline("zoo")
        zoo_pipeline.prepare()
        self.precision = zoo_pipeline.precision
        if self.patient:
            jobs = self.patient_jobs(selected=True)
            for pipeline in {job[0].out: job[0] for job in jobs}.values():
                pipeline.prepare()
            demo.run_side_by_side([(zoo_pipeline, demo.STEPS[0]), *jobs])
            return self.summarize()
        selection = self.pipeline("selection")
        for pipeline in [selection, *(self.pipeline(f"seed{s}", s) for s in range(self.seeds))]:
            pipeline.prepare()
        choosing = [row for row in self.selected() if row.choice]
        demo.run_side_by_side(
            [(zoo_pipeline, demo.STEPS[0])] + [(selection, s) for row in choosing for s in self.selection_steps(row)]
        )
        chosen = {row.key: self.chosen(row) for row in choosing}
        for row in choosing:
            print(
                f"{row.label}: {row.choice[0]}={chosen[row.key]:g} chosen on {self.held_out} held-out training images"
            )
        demo.run_side_by_side(self.jobs(chosen))
        return self.summarize()

    # ----------------------------------------------------------------------------------------------
    # The table
    # ----------------------------------------------------------------------------------------------
    def last_values(self, pipeline: Pipeline, step: Step) -> Optional[dict]:
        """A finished run's last-epoch metrics (top-1, agreement, ECE in %; NLL), its val top-1 per epoch and its
        ``done.json`` (time, machine), or None if it has not finished."""
        folder = pipeline.run_dir(step)
        if not (folder / "done.json").is_file():
            return None
        scalars = zoo.read_scalar_tags(folder, list(TAGS.values()))
        values = {key: (scalars[tag][-1] if scalars[tag] else None) for key, tag in TAGS.items()}
        values = {k: (100 * v if v is not None and k != "nll" else v) for k, v in values.items()}
        curve = [round(100 * v, 3) for v in scalars[TAGS["top1"]]]
        return {**values, "val_top1_per_epoch": curve, **json.loads((folder / "done.json").read_text())}

    def summarize(self) -> dict:
        per_row = {}
        for row in ROWS:
            by_seed = {}
            for seed in range(row.seeds):
                pipeline = self.pipeline(f"seed{seed}", seed)
                if (found := self.last_values(pipeline, self.row_step(row))) is not None:
                    by_seed[seed] = found
            per_row[row.key] = by_seed
        rows = [table_row(row, per_row[row.key], per_row[REFERENCE]) for row in ROWS if per_row[row.key]]
        choosing = [row for row in ROWS if row.choice]
        held_out = {row.key: self.held_out_runs(row) for row in choosing}  # read once: the table and the choice
        scores = {key: {v: run["top1"] for v, run in found.items()} for key, found in held_out.items()}
        selection = {key: {f"{v:g}": top1 for v, top1 in found.items()} for key, found in scores.items()}
        chosen = {r.key: self.chosen(r, scores[r.key]) for r in choosing if len(scores[r.key]) == len(r.choice[1])}
        runs = [  # every finished run, as data: what ran and what it scored
            {"row": row.key, "seed": seed, "configs": [str(c.relative_to(ROOT)) for c in (*row.configs, BUDGET)],
             "args": list(self.row_step(row, chosen).args), **found}
            for row in ROWS for seed, found in per_row[row.key].items()
        ] + [
            {"row": row.key, "seed": 0, "held_out": True, "configs": [str(c.relative_to(ROOT)) for c in step.configs],
             "args": list(step.args), **held_out[row.key][v]}
            for row in choosing for v, step in zip(row.choice[1], self.selection_steps(row), strict=True) if v in held_out[row.key]
        ]  # fmt: skip
        machines = sorted({run["machine"] for run in runs if "machine" in run}) or [machine()]
        result = {
            "machine": " + ".join(machines),  # where the runs ran
            "precision": self.precision or self.precision_used(),
            "held_out_images": self.held_out,
            "selection": selection,  # per row with a choice: held-out top-1 of each value
            "chosen": chosen,
            "zoo": self.zoo_rows(),
            "rows": rows,
            "runs": runs,
            "patient": self.patient_rows(),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "table.json").write_text(json.dumps(result, indent=2))
        text = markdown(result)
        (self.out / "table.md").write_text(text)
        print(text, flush=True)
        return result

    def precision_used(self) -> Optional[str]:
        """The precision the runs were made with (read back from a run's saved config, for ``--summary``)."""
        import yaml

        for config in sorted(self.out.glob("seed*/runs/fashion_mnist/*/main/config.yaml")):
            return yaml.safe_load(config.read_text())["trainer"]["precision"]
        return None

    def zoo_rows(self) -> dict:
        """The zoo's teachers, ensemble and init on the test images (the validate step: one evaluation)."""
        pipeline = self.pipeline("zoo")
        result = {k: v for k, v in demo.zoo_evaluation(pipeline).items() if v is not None}
        if init := self.last_values(pipeline, demo.STEPS[0]):  # the init's row beside the table's rows
            result["student init, detail"] = {key: init[key] for key in TAGS}
        return result

    def patient_rows(self) -> dict:
        """Per patient row and seed: val top-1 per epoch, and how far the run fits its own training crops."""
        rows = {}
        for pipeline, step in self.patient_jobs():
            if not (pipeline.run_dir(step) / "done.json").is_file():
                continue
            scalars = zoo.read_scalar_tags(pipeline.run_dir(step), ["val/top1", "train/top1", "train/agreement"])
            done = json.loads((pipeline.run_dir(step) / "done.json").read_text())
            run = {"val_top1": [100 * v for v in scalars["val/top1"]], **done}  # time, machine, as a table run's
            run |= {f"last_{tag.replace('/', '_')}": 100 * scalars[tag][-1] for tag in scalars if scalars[tag]}
            rows.setdefault(step.name, {})[str(pipeline.seed)] = run
        return rows


def plot(result: dict, path: Path) -> None:
    """The patient rows' val top-1 on the test images per epoch, mean over the seeds run (none run: no plot)."""
    if not result["patient"]:
        return
    curves = {
        f"{patient_label(name)} ({seed_count(len(seeds))})": [run["val_top1"] for run in seeds.values()]
        for name, seeds in result["patient"].items()
    }
    lines = {label: result["zoo"].get(label) for label in (demo.INIT, demo.ENSEMBLE)}
    for name in OWN_INIT.keys() & result["patient"].keys():  # a student's own init, where it has one
        lines[f"{patient_label(name)}: its init ({OWN_INIT[name]})"] = result["zoo"].get(OWN_INIT[name])
    title = "Fashion-MNIST, 30 epochs: mean over seeds (band: lowest to highest seed)"
    demo.plot(curves, lines, path, title, "epoch (cosine over 30 epochs, from each student's init in the zoo)")


def publish(result: dict) -> None:
    """The committed evidence from one result: docs/method_table.json, the README's table and the plot."""
    PUBLISHED.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, PUBLISHED_PLOT)
    readme = README.read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    README.write_text(readme[:start] + "\n" + markdown(result) + readme[end:])


def table_row(row: Row, by_seed: dict[int, dict], reference: dict[int, dict]) -> dict:
    result = {"key": row.key, "label": row.label, "seeds": sorted(by_seed)}
    for metric in TAGS:
        values = [v[metric] for v in by_seed.values() if v[metric] is not None]
        result[metric] = interval(values) if values else None
    result["top1_by_seed"] = {s: v["top1"] for s, v in by_seed.items()}
    common = sorted(set(by_seed) & set(reference))
    if row.key != REFERENCE and common:
        leads = [reference[s]["top1"] - by_seed[s]["top1"] for s in common]
        result["meal_v2_lead"] = {
            **interval(leads),
            "ahead": sum(d > 0 for d in leads),
            "by_seed": dict(zip(common, leads, strict=True)),
        }
    return result


def cell(stat: Optional[dict], form: str = "{:.2f}", signed: bool = False) -> str:
    if stat is None:
        return ""
    mean = number(stat["mean"], form, signed)
    return mean if stat["half_width"] is None else f"{mean} ± {number(stat['half_width'], form)}"


def markdown(result: dict) -> str:
    rows = {row.key: row for row in ROWS}
    choices = [
        f" {rows[key].label}'s {rows[key].choice[0]}: "
        + (f"{result['chosen'][key]:g}, chosen" if key in result["chosen"] else "not chosen yet")
        + f" by last-epoch top-1 on {result['held_out_images']:,} held-out training images ("
        + ", ".join(f"{v}: {top1:.2f}" for v, top1 in scores.items())
        + ")."
        for key, scores in result["selection"].items()
        if scores
    ]
    lines = [
        f"Fashion-MNIST, {result['machine']}, precision {result['precision']}; {run_time(result)}. Every row trains "
        "the zoo's ResNet-8 init for 7 epochs (the random-init ablation: from scratch): SGD, momentum 0.9, cosine "
        "from lr 0.01, batch 128, the ensemble's soft labels on the same stored crops (the "
        "single-teacher ablation runs its teacher online on fresh crops of the same augmentation). Weight decay: "
        "5e-4 for the hard-label baseline (its recipe's), 0 for every distillation row (MEAL V2's). MEAL V2 rows: soft "
        "cross-entropy on the mean of probabilities + the released discriminator, no labels; Hinton KD, DKD, DIST: "
        "their loss on the mean teacher logits + the hard-label cross-entropy (weight 1), no discriminator. Function "
        "matching (no labels, no discriminator) and MEAL V2 with consistent teaching replay the zoo's mixed crops "
        "(each a mixup of two images' stored crops, lambda ~ Beta(1, 1)) with the ensemble's labels on the mix. Top-1, "
        "agreement with the ensemble's top-1, NLL and ECE (15 bins) on the 10,000 test images at the last epoch, "
        "mean ± 95 % t-interval over seeds; MEAL V2's lead paired by seed. A seed sets the batch order and each "
        "image's order of stored crops; every seed starts from the zoo's one init, so the intervals cover training "
        "noise only." + "".join(choices),
        "",
    ]
    rows = [
        [row["label"], len(row["seeds"]), cell(row["top1"]),
         *((cell(lead, signed=True), f"{lead['ahead']}/{lead['n']}") if (lead := row.get("meal_v2_lead")) else ("—", "—")),
         cell(row["agreement"]), cell(row["nll"], "{:.3f}"), cell(row["ece"])]
        for row in result["rows"]
    ]  # fmt: skip
    header = "row | seeds | top-1 (%) | MEAL V2 − row (points) | MEAL V2 ahead | agreement (%) | NLL | ECE (%)"
    lines += table_lines(header, rows)
    if zoo_rows := {k: v for k, v in result["zoo"].items() if not isinstance(v, dict)}:
        lines += ["", "The zoo on the same images: " + ", ".join(f"{k} {v:.2f} %" for k, v in zoo_rows.items()) + "."]
    if result["patient"]:
        lines += ["", patient_line(result)]
    if said := verdict(result):
        lines += ["", said]
    return "\n".join(lines) + "\n"


def run_time(result: dict) -> str:
    """How many runs the result holds and their time, summed over runs (each on its own thread(s))."""
    patient = [run for seeds in result["patient"].values() for run in seeds.values()]
    every = [*result["runs"], *patient]
    seconds = sum(run["seconds"] or 0 for run in every)
    threads = sorted({run.get("threads", 1) for run in every})
    held_out = sum(run.get("held_out", False) for run in result["runs"])
    resumed = sum("earlier_starts_seconds" in run for run in every)
    return (
        f"{len(result['runs'])} runs of 7 epochs ({held_out} of them on held-out images for the choices) and "
        f"{len(patient)} of 30, {seconds / 3600:.1f} h summed over runs "
        f"({'/'.join(map(str, threads))} thread(s) each, as many side by side as there are cores; "
        f"{resumed} resumed after an interruption, their earlier starts counted as they ran)"
    )


def verdict(result: dict) -> str:
    """The table in words no stronger than its intervals: the rows MEAL V2 ends above, below, or not told apart
    from (its paired 95 % interval above 0, below 0, or across it), and those with one seed, so no interval."""
    groups: dict[str, list[str]] = {}
    for row in result["rows"]:
        if not (lead := row.get("meal_v2_lead")):
            continue
        mean, half = lead["mean"], lead["half_width"]
        if half is None:
            where = "one seed so far, no interval"
        elif mean - half > 0:
            where = "above"
        else:
            where = "below" if mean + half < 0 else "not told apart from"
        ahead = f", ahead in {lead['ahead']}/{lead['n']} seeds" if half is not None else ""
        groups.setdefault(where, []).append(f"{row['label']} ({cell(lead, signed=True)}{ahead})")
    order = ("above", "not told apart from", "below", "one seed so far, no interval")
    said = [f"{where.capitalize()}: {'; '.join(groups[where])}" for where in order if where in groups]
    return (
        "**MEAL V2 against each row** (MEAL V2 − row, points, 95 % interval paired by seed): " + ". ".join(said) + "."
        if said
        else ""
    )


def seed_count(n: int) -> str:
    return f"{n} seed{'s' * (n > 1)}"


def patient_label(name: str) -> str:
    """A patient run's row label (its run name if no row has it)."""
    return {f"patient_{row.key}": row.label for row in (*ROWS, WIDER)}.get(name, name)


def patient_line(result: dict) -> str:
    """Each patient row's last-epoch top-1 and share of the init -> ensemble gap closed, mean and 95 % interval over
    seeds, and MEAL V2's lead over each other ResNet-8 row paired by seed."""
    parts, last, ensemble = [], {}, result["zoo"].get(demo.ENSEMBLE)
    for name, seeds in result["patient"].items():
        last[name] = {seed: run["val_top1"][-1] for seed, run in seeds.items()}
        epochs = len(next(iter(seeds.values()))["val_top1"])
        top1 = cell(interval(list(last[name].values())))
        part = f"{patient_label(name)} {top1} % after {epochs} epochs ({seed_count(len(seeds))})"
        init = result["zoo"].get(OWN_INIT.get(name, demo.INIT))
        if None not in (init, ensemble):
            closed = [100 * (v - init) / (ensemble - init) for v in last[name].values()]
            part += f", gap closed {cell(interval(closed), '{:.0f}')} %"
            part += f" (from its own init, {OWN_INIT[name]} {init:.2f} %)" if name in OWN_INIT else ""
        if fits := [run["last_train_top1"] for run in seeds.values() if "last_train_top1" in run]:
            part += f", fits {cell(interval(fits))} % of its own training crops"
        if agrees := [run["last_train_agreement"] for run in seeds.values() if "last_train_agreement" in run]:
            part += f" and agrees with the ensemble on {cell(interval(agrees))} %"
        parts.append(part)
    line = "**Patient schedule** (30 epochs, cosine; mean ± 95 % t-interval over seeds; a mixed crop's label is its "
    line += "larger part's): " + "; ".join(parts)
    meal, leads = last.get(f"patient_{REFERENCE}", {}), []
    for name, other in last.items():  # a row from another init is not paired with MEAL V2
        if name not in (f"patient_{REFERENCE}", *OWN_INIT) and (common := sorted(set(meal) & set(other))):
            lead = interval([meal[s] - other[s] for s in common])
            leads.append(f"{patient_label(name)} {cell(lead, signed=True)} ({seed_count(len(common))})")
    if leads:
        line += "; MEAL V2 − row, points paired by seed: " + ", ".join(leads)
    return line + "."


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "method_table")
    parser.add_argument("--seeds", type=int, default=5, help="at most this many seeds per row (default 5)")
    parser.add_argument("--held-out", type=int, default=10_000, help="training images held out for the choices")
    parser.add_argument("--zoo", type=Path, default=zoo.ZOO_DIR)
    parser.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--precision", default=None, help="Trainer precision (default: as the demo picks it)")
    parser.add_argument("--patient", action="store_true", help="the 30-epoch rows (of --rows) instead of the table")
    parser.add_argument("--rows", nargs="+", choices=Table.rows, default=Table.rows)
    parser.add_argument("--summary", action="store_true", help="only the table from the runs done so far")
    parser.add_argument("--publish", action="store_true", help="write docs/method_table.json, its plot, README's table")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # tiny runs, for the tests
    args = parser.parse_args(argv)
    table = Table(
        args.out.resolve(),
        args.seeds,
        args.held_out,
        args.zoo.resolve(),
        str(Path(args.data_dir).resolve()) if args.data_dir else None,
        args.precision,
        args.smoke,
        args.patient,
        tuple(args.rows),
    )
    try:
        result = table.summarize() if args.summary else table.run()
    except (zoo.ZooError, demo.DemoError) as error:
        raise SystemExit(f"error: {error}") from None
    plot(result, table.out / "patient_val_top1.png")
    if args.publish:
        publish(result)
    return result


if __name__ == "__main__":
    main()
