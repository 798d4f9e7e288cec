"""The method table (experiments/method_table.py): choices on held-out images only, intervals, pairing by seed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import method_table  # noqa: E402
from method_table import ROWS, Table, interval, markdown  # noqa: E402


def write_run(folder: Path, top1: list[float], done: bool = True, **last) -> None:
    """A finished run's TensorBoard scalars: val/top1 per epoch (fractions), other tags at the last epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(folder))
    for step, value in enumerate(top1):
        writer.add_scalar("val/top1", value, step)
    for tag, value in last.items():
        writer.add_scalar(tag, value, len(top1) - 1)
    writer.close()
    if done:
        (folder / "done.json").write_text(json.dumps({"seconds": 1.0}))


def test_interval_is_the_mean_with_a_95_percent_t_interval():
    stat = interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert stat["mean"] == 3.0 and stat["n"] == 5
    assert stat["half_width"] == pytest.approx(2.776 * (2.5**0.5) / 5**0.5, rel=1e-4)
    assert interval([2.0])["half_width"] is None


def test_a_declared_choice_is_made_on_held_out_training_images_never_on_the_test_images(tmp_path):
    table = Table(tmp_path)
    kd = next(row for row in ROWS if row.key == "hinton_kd")
    assert kd.choice == ("temperature", (1.0, 2.0, 4.0, 8.0))  # from its overlay's header
    selection = table.pipeline("selection")
    for step in table.selection_steps(kd):
        assert "--data.init_args.val_size=10000" in selection.command(step)  # validated on held-out images
    held_out = dict(zip(kd.choice[1], (0.90, 0.93, 0.92, 0.93), strict=True))  # a tie: the first listed wins
    for step, t in zip(table.selection_steps(kd), kd.choice[1], strict=True):
        write_run(selection.run_dir(step), [0.5, held_out[t]])
    # A run on the test images that would win if it were read: the choice must not see it.
    write_run(table.pipeline("seed0", 0).run_dir(table.row_step(kd, {kd.key: 8.0})), [0.99])
    assert table.chosen(kd) == 2.0
    for pipeline, step in table.jobs({kd.key: 2.0}):
        command = pipeline.command(step)
        assert not any("val_size" in arg for arg in command)  # the table's rows report on the test images
        assert ("--model.init_args.objective.init_args.temperature=2.0" in command) == (step.name == kd.key)


def test_summary_pairs_every_row_with_meal_v2_by_seed(tmp_path):
    table = Table(tmp_path, seeds=3)
    values = {"meal_v2": (0.934, 0.935, 0.936), "baseline": (0.932, 0.936, 0.933)}
    for seed in range(3):
        pipeline = table.pipeline(f"seed{seed}", seed)
        for key, tops in values.items():
            row = next(r for r in ROWS if r.key == key)
            write_run(
                pipeline.run_dir(table.row_step(row)),
                [0.9, tops[seed]],
                **{"val/agreement": 0.97, "val/loss": 0.2, "val/ece": 0.01},
            )
    resumed = table.pipeline("seed2", 2).run_dir(table.row_step(ROWS[0])) / "done.json"
    resumed.write_text(json.dumps({"seconds": 3600.0, "earlier_starts_seconds": 1000.0}))
    result = method_table.main(["--summary", "--out", str(tmp_path), "--seeds", "3"])  # as the README prints it
    rows = {row["key"]: row for row in result["rows"]}
    assert set(rows) == {"meal_v2", "baseline"}
    lead = rows["baseline"]["meal_v2_lead"]
    assert lead["by_seed"] == pytest.approx({0: 0.2, 1: -0.1, 2: 0.3}, abs=1e-4)  # TensorBoard keeps fp32
    assert lead["ahead"] == 2 and lead["mean"] == pytest.approx(0.4 / 3, abs=1e-4)
    assert rows["meal_v2"]["top1"]["mean"] == pytest.approx(93.5, abs=1e-4) and "meal_v2_lead" not in rows["meal_v2"]
    assert rows["meal_v2"]["agreement"]["mean"] == pytest.approx(97.0, abs=1e-4) and rows["meal_v2"]["nll"][
        "mean"
    ] == pytest.approx(0.2)
    run = next(r for r in result["runs"] if (r["row"], r["seed"]) == ("baseline", 1))  # every run, as data
    assert run["val_top1_per_epoch"] == pytest.approx([90.0, 93.6], abs=1e-3) and run["seconds"] == 1.0
    assert run["configs"][0] == "configs/fashion_mnist/baseline_resnet8_hard_labels.yaml" and len(result["runs"]) == 6
    text = (tmp_path / "table.md").read_text()
    assert "| hard labels (baseline) | 3 | 93.37 ± " in text and "| +0.13 ± " in text and "| 2/3 |" in text
    assert "Weight decay: 5e-4 for the hard-label baseline" in text
    assert "1.0 h summed over runs" in text and "1 resumed after an interruption" in text


def test_an_unfinished_run_is_left_out_of_the_table(tmp_path):
    table = Table(tmp_path, seeds=2)
    meal = next(r for r in ROWS if r.key == "meal_v2")
    write_run(table.pipeline("seed0", 0).run_dir(table.row_step(meal)), [0.93])
    write_run(table.pipeline("seed1", 1).run_dir(table.row_step(meal)), [0.5], done=False)
    (row,) = table.summarize()["rows"]
    assert row["seeds"] == [0] and row["top1"]["mean"] == pytest.approx(93.0)


def test_every_config_with_a_method_table_header_is_a_row_naming_configs_that_exist():
    assert [r.key for r in ROWS][:2] == ["baseline", "meal_v2"] and {"hinton_kd", "ls_kd", "ablation_random_init"} < {
        r.key for r in ROWS
    }
    for row in ROWS:
        assert all(path.is_file() for path in row.configs), row.key
    assert all(path.is_file() for step in Table(Path("unused")).patient_steps() for path in step.configs)
    names = {f"patient_{key}" for key in (*method_table.PATIENT_ROWS, method_table.WIDER.key)}
    assert names == {s.name for s in Table(Path("x")).patient_steps()}
    assert method_table.PATIENT.is_file()


def test_patient_rows_report_the_gap_closed_and_the_margin_over_seeds_and_are_plotted(tmp_path):
    table = Table(tmp_path)
    zoo_run = table.pipeline("zoo").run_dir(method_table.demo.STEPS[0])
    write_run(zoo_run, [0.9315], done=False, **{"val/ensemble_top1": 0.954, "val/teacher0_top1": 0.949})
    finals = {"patient_baseline": (0.935, 0.934), "patient_meal_v2": (0.94, 0.941)}  # seeds 0 and 1
    finals["patient_meal_v2_resnet20"] = (0.952, 0.951)  # the wider student, from ResNet-20's 94.9 %
    for pipeline, step in table.patient_jobs():
        if step.name in finals and pipeline.seed < 2:
            fit = {"train/top1": 0.95 + pipeline.seed / 100, "train/agreement": 0.97}  # seeds 0, 1 fit 95, 96 %
            write_run(pipeline.run_dir(step), [0.92, finals[step.name][pipeline.seed]], **fit)
    result = method_table.main(["--summary", "--out", str(tmp_path)])
    line = method_table.patient_line(result)
    fits = "fits 95.50 ± 6.35 % of its own training crops and agrees with the ensemble on 97.00 ± 0.00 %"
    assert f"MEAL V2 94.05 ± 0.64 % after 2 epochs (2 seeds), gap closed 40 ± 28 %, {fits}" in line
    assert "paired by seed: hard labels (baseline) +0.60 ± 1.27 (2 seeds)." in line  # gap: (94.05 - 93.15) / 2.25
    wider = "ResNet-20 student 95.15 ± 0.64 % after 2 epochs (2 seeds), gap closed 50 ± 127 % (from its own init, "
    assert wider + "teacher: ResNet-20 94.90 %)" in line
    assert set(result["patient"]) == set(finals) and (tmp_path / "patient_val_top1.png").stat().st_size > 1000


def test_words_say_no_more_than_the_intervals():
    rows = [
        {"label": "A", "meal_v2_lead": {"mean": 0.2, "half_width": 0.1, "n": 5, "ahead": 5}},
        {"label": "B", "meal_v2_lead": {"mean": 0.2, "half_width": 0.3, "n": 5, "ahead": 3}},
        {"label": "C", "meal_v2_lead": {"mean": -0.5, "half_width": 0.1, "n": 3, "ahead": 0}},
        {"label": "D", "meal_v2_lead": {"mean": 0.6, "half_width": None, "n": 1, "ahead": 1}},
        {"label": "E", "meal_v2_lead": {"mean": -0.001, "half_width": 0.4, "n": 3, "ahead": 1}},
    ]
    said = method_table.verdict({"rows": rows})
    assert "Above: A (+0.20 ± 0.10, ahead in 5/5 seeds)." in said
    assert "Not told apart from: B (+0.20 ± 0.30, ahead in 3/5 seeds); E (0.00 ± 0.40, ahead in 1/3 seeds)." in said
    assert "Below: C (-0.50 ± 0.10, ahead in 0/3 seeds)." in said and "no interval: D (+0.60)." in said


def test_the_readme_table_and_plot_are_generated_from_the_committed_runs(tmp_path, monkeypatch):
    committed = json.loads(method_table.PUBLISHED.read_text())
    readme = method_table.README.read_text()
    assert f"{method_table.BEGIN}\n{method_table.markdown(committed)}{method_table.END}" in readme
    assert committed["runs"] and all(
        {"row", "seed", "configs", "val_top1_per_epoch", "seconds"} <= set(r) for r in committed["runs"]
    )
    # `--summary --publish` writes the three from the runs, and leaves the rest of the README as it was.
    for name, path in (("PUBLISHED", "t.json"), ("PUBLISHED_PLOT", "t.png"), ("README", "README.md")):
        monkeypatch.setattr(method_table, name, tmp_path / path)
    (tmp_path / "README.md").write_text(f"intro\n{method_table.BEGIN}\nold\n{method_table.END}\nrest\n")
    table, meal = Table(tmp_path / "runs"), ROWS[1]
    write_run(table.pipeline("seed0", 0).run_dir(table.row_step(meal)), [0.93])
    write_run(table.pipeline("patient_seed0", 0).run_dir(table.patient_steps()[1]), [0.92, 0.94])
    result = method_table.main(["--summary", "--publish", "--out", str(tmp_path / "runs")])  # as the README prints it
    assert json.loads((tmp_path / "t.json").read_text()) == json.loads(json.dumps(result))
    assert (tmp_path / "t.png").stat().st_size > 1000 and "| MEAL V2 | 1 | 93.00 |" in markdown(result)
    generated = f"{method_table.BEGIN}\n{method_table.markdown(result)}{method_table.END}"
    assert (tmp_path / "README.md").read_text() == f"intro\n{generated}\nrest\n"


def test_the_patient_rows_are_a_command_of_their_own(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(method_table.demo, "run_side_by_side", lambda jobs: started.append([s.name for _, s in jobs]))
    monkeypatch.setattr(method_table.Pipeline, "prepare", lambda self: setattr(self, "precision", "32-true"))
    monkeypatch.setattr(Table, "chosen", lambda self, row, scores=None: row.choice[1][0])
    Table(tmp_path, seeds=3).run()  # the 7-epoch table: the choices, then the rows; no 30-epoch run
    assert started[0][0] == "zoo_evaluation" and any(name.startswith("hinton_kd_temperature") for name in started[0])
    assert "meal_v2" in started[1] and not any(name.startswith("patient_") for run in started for name in run)
    started.clear()
    Table(tmp_path, seeds=3, patient=True).run()  # --patient: the zoo's evaluation and the five rows over 3 seeds
    (names,) = started
    rows = [*method_table.PATIENT_ROWS, method_table.WIDER.key]
    assert names == ["zoo_evaluation", *[f"patient_{key}" for key in rows] * 3]
