"""The project's Fashion-MNIST model zoo: train it from its configs, export each run's last epoch, verify it.

A zoo entry is a folder in timm's export format plus a manifest:
    zoo/fashion_mnist/<name>/model.safetensors   weights (fp16 when that keeps the val top-1)
    zoo/fashion_mnist/<name>/config.json         timm's config: architecture, classes, input size, mean/std
    zoo/fashion_mnist/<name>/manifest.json       how it was made and what it scores, with the sha256
MEAL V2 configs load it like any user's weights: ``checkpoint: zoo/fashion_mnist/<name>/model.safetensors``.
Beside the models, ``zoo/fashion_mnist/soft_labels/`` holds the teachers' ensemble on stored crops of every
training image (a soft-label cache made by ``cli.py predict``, every class stored) with its own manifest;
the MEAL V2 recipe trains from it through the ordinary ``data.soft_labels`` option. ``soft_labels_mixed/`` is
its consistent-teaching twin (each stored crop mixed with another image's, labelled on the mix).

    python demo.py --rebuild-zoo     # train every zoo config, then export (see README for the time)
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from datamodules import fashion_mnist
from errors import ZooError
from lightning_modules.hardware import machine

ROOT = Path(__file__).resolve().parent
ZOO_CONFIGS = ROOT / "configs" / "fashion_mnist" / "zoo"
ZOO_DIR = ROOT / "zoo" / "fashion_mnist"
FP16_TOLERANCE = 0.05  # val top-1 points fp16 weights may lose against fp32 before the zoo keeps fp32


@dataclass(frozen=True)
class ZooModel:
    name: str  # = config stem = zoo folder name
    role: str  # teacher | student_init
    label: str  # row name in the demo's table


MODELS = [
    ZooModel("teacher_resnet20", "teacher", "teacher: ResNet-20"),
    ZooModel("teacher_wrn_16_2", "teacher", "teacher: WRN-16-2"),
    ZooModel("student_init_resnet8", "student_init", "student init (hard labels)"),
]
SOFT_LABELS = "soft_labels"  # zoo folder of the ensemble's soft-label cache
SOFT_LABEL_RECIPE = "configs/fashion_mnist/resnet8_from_resnet20+wrn_16_2.yaml"  # names the cache folder and its crops
MIXED = "soft_labels_mixed"  # the consistent-teaching cache, named by the function-matching overlay
CACHE_CONFIGS = {
    SOFT_LABELS: (SOFT_LABEL_RECIPE,),
    MIXED: (SOFT_LABEL_RECIPE, "configs/fashion_mnist/methods/function_matching.yaml"),
}
SOFT_LABEL_ARGS = ("--trainer.precision=32-true",)


def weights_path(zoo_dir: Path, name: str) -> Path:
    return zoo_dir / name / "model.safetensors"


def sha256(path: Path) -> str:
    from models.loading import file_sha256

    return file_sha256(path)


def verify(zoo_dir: Path = ZOO_DIR) -> list[dict]:
    """Every model's weights and the soft labels' files exist and match the sha256 of their manifests; returns
    the models' manifests."""
    manifests = []
    for model in MODELS:
        folder = zoo_dir / model.name
        if not (folder / "manifest.json").is_file() or not weights_path(zoo_dir, model.name).is_file():
            raise ZooError(
                f"Zoo model '{folder}' is missing: run `python demo.py --rebuild-zoo` (or check out the repository's zoo/)."
            )
        manifest = json.loads((folder / "manifest.json").read_text())
        actual = sha256(weights_path(zoo_dir, model.name))
        if actual != manifest["sha256"]:
            raise ZooError(
                f"Zoo weights '{weights_path(zoo_dir, model.name)}' do not match their manifest (sha256 {actual[:12]} "
                f"!= {manifest['sha256'][:12]}): restore them with git or run `python demo.py --rebuild-zoo`."
            )
        manifests.append(manifest)
    for name in CACHE_CONFIGS:
        verify_soft_labels(zoo_dir, name)
    return manifests


def verify_soft_labels(zoo_dir: Path = ZOO_DIR, name: str = SOFT_LABELS) -> dict:
    """A shipped soft-label cache's files match the sha256 of its manifest; returns the manifest."""
    folder = zoo_dir / name
    if not (folder / "manifest.json").is_file():
        raise ZooError(
            f"Zoo soft labels '{folder}' are missing or unfinished: run `python demo.py --rebuild-zoo` "
            "(or check out the repository's zoo/)."
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, expected in manifest["files"].items():
        actual = sha256(folder / name) if (folder / name).is_file() else "missing"
        if actual != expected["sha256"]:
            raise ZooError(
                f"Zoo soft labels '{folder / name}' do not match their manifest (sha256 {actual[:12]} != "
                f"{expected['sha256'][:12]}): restore them with git or run `python demo.py --rebuild-zoo`."
            )
    return manifest


def link(zoo_dir: Path, work_dir: Path) -> None:
    """The configs name ``zoo/fashion_mnist/...`` relative to where cli.py runs: point that at ``zoo_dir``."""
    path = work_dir / "zoo" / "fashion_mnist"
    if path.resolve() == zoo_dir.resolve():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink():
        path.unlink()
    if path.exists():
        raise ZooError(f"'{path}' is a folder, not a link to the zoo '{zoo_dir}': move it away or use another --out.")
    path.symlink_to(zoo_dir.resolve(), target_is_directory=True)


# --------------------------------------------------------------------------------------------------
# Build: train through cli.py, then export the run's last epoch
# --------------------------------------------------------------------------------------------------
def cli_command(subcommand: str, configs: tuple, *args: str) -> list[str]:
    """``python cli.py SUBCOMMAND --config ...`` as a person types it in the repository (what manifests record)."""
    names = [str(Path(c).resolve().relative_to(ROOT)) for c in configs]
    return ["python", "cli.py", subcommand, *(a for name in names for a in ("--config", name)), *args]


def runnable(command: list[str]) -> list[str]:
    """A ``cli_command`` as this interpreter runs it from any folder: the one way the project launches the CLI."""
    return [
        sys.executable,
        str(ROOT / "cli.py"),
        *(str(ROOT / a) if a.startswith("configs/") else a for a in command[2:]),
    ]


def run_dir(work_dir: Path, model: ZooModel) -> Path:
    return work_dir / "runs" / "fashion_mnist" / "zoo" / model.name / "main"


def rebuild(
    zoo_dir: Path = ZOO_DIR, work_dir: Path = ROOT, extra_args: tuple[str, ...] = (), data_dir: Optional[str] = None
) -> list[dict]:
    """Train every zoo model (a finished run is reused, an interrupted one resumes), export them all, then make
    the ensemble's soft labels (remade when a teacher was retrained, resumed when interrupted)."""
    manifests, retrained = [], False
    for model in MODELS:
        args = list(extra_args) + ([f"--data.init_args.data_dir={data_dir}"] if data_dir else [])
        folder, done = run_dir(work_dir, model), run_dir(work_dir, model) / "done.json"
        if done.is_file():
            print(f"zoo: {model.name}: trained earlier ({folder}), exporting", flush=True)
        else:
            retrained = retrained or model.role == "teacher"
            last = folder / "checkpoints" / "last.ckpt"
            resume = [f"--ckpt_path={last}"] if last.is_file() else ["--overwrite=true"] if folder.is_dir() else []
            config = (ZOO_CONFIGS / f"{model.name}.yaml",)
            command = cli_command("fit", config, *args, *resume)
            print(f"zoo: {model.name}: {shlex.join(command)}", flush=True)
            started = time.perf_counter()
            work_dir.mkdir(parents=True, exist_ok=True)
            subprocess.run(runnable(command), cwd=work_dir, check=True)
            seconds = round(time.perf_counter() - started, 1)
            done.write_text(
                json.dumps({"seconds": seconds, "command": shlex.join(cli_command("fit", config, *extra_args))})
            )
        manifests.append(export(model, folder, zoo_dir, json.loads(done.read_text()), data_dir))
    for name in CACHE_CONFIGS:
        manifests.append(make_soft_labels(zoo_dir, work_dir, extra_args, data_dir, remake=retrained, name=name))
    return manifests


def make_soft_labels(
    zoo_dir: Path,
    work_dir: Path,
    extra_args: tuple[str, ...] = (),
    data_dir: Optional[str] = None,
    remake: bool = False,
    name: str = SOFT_LABELS,
) -> dict:
    """Run the soft-label ``predict`` of cache ``name`` over every training image with the zoo's teachers, then
    write its manifest."""
    folder = zoo_dir / name
    if remake and folder.is_dir():
        shutil.rmtree(folder)  # labels of the teachers just replaced
    if (folder / "manifest.json").is_file():
        print(f"zoo: {name}: made earlier ({folder}), kept", flush=True)
        return verify_soft_labels(zoo_dir, name)
    work_dir.mkdir(parents=True, exist_ok=True)
    link(zoo_dir, work_dir)
    # The MEAL V2 recipe's teachers label its stored crops (or, with its overlay, mixed crops) into the zoo's folder.
    args = (*SOFT_LABEL_ARGS, f"--trainer.logger.init_args.name=zoo_{name}", *extra_args)
    command = cli_command("predict", tuple(ROOT / c for c in CACHE_CONFIGS[name]), *args)
    print(f"zoo: {name}: {shlex.join(command)}", flush=True)
    data = [f"--data.init_args.data_dir={data_dir}"] if data_dir else []
    started = time.perf_counter()
    subprocess.run(runnable(command) + data, cwd=work_dir, check=True)
    return write_soft_labels_manifest(folder, shlex.join(command), round(time.perf_counter() - started, 1), name=name)


def write_soft_labels_manifest(
    folder: Path, command: str, seconds: float, note: Optional[str] = None, name: str = SOFT_LABELS
) -> dict:
    """What the cache holds, how it was made (``note``: how it ran, if not alone), and the sha256 of each file."""
    meta = json.loads((folder / "meta.json").read_text())
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256(path)}
        for path in sorted(folder.iterdir())
        if path.name != "manifest.json" and not path.name.startswith(".")  # not the cache's folder marker
    }
    mixed = (
        ", each crop mixed with another image's stored crop (its partner and weight stored)" if name == MIXED else ""
    )
    manifest = {
        "name": name,
        "role": "soft_labels",
        "what": "the zoo teachers' ensemble on stored random crops of every training image: mean of the teachers' "
        f"probabilities and mean of their logits, every class kept (fp16), with each crop's box and flip{mixed}",
        "images": meta["images"],
        "crops": meta["crops"],
        "top_k": meta["top_k"],
        "classes": meta["classes"],
        "ensemble_val_top1": meta.get("ensemble_val_top1"),
        "fingerprint": meta["fingerprint"],
        "command": command,
        "config": " + ".join(CACHE_CONFIGS[name]),
        **({"mixup_alpha": meta["mixup_alpha"]} if meta.get("mixup_alpha") else {}),
        "precision": "32-true",
        "wall_seconds": seconds,
        **({"wall_note": note} if note else {}),
        "machine": machine(),
        "versions": versions(),
        "bytes": sum(f["bytes"] for f in files.values()),
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"zoo: {name}: {meta['images']} images x {meta['crops']} crops, {manifest['bytes'] / 1e6:.1f} MB "
        f"in {seconds:.0f} s",
        flush=True,
    )
    return manifest


def export(model: ZooModel, run: Path, zoo_dir: Path, done: dict, data_dir: Optional[str] = None) -> dict:
    """The run's ``last.ckpt`` (its last epoch) -> zoo folder, fp16 unless that costs val top-1; writes the manifest.

    ``done``: the run's ``done.json``: wall ``seconds``, the ``command`` that ran, and an optional ``note`` on how it ran.
    """
    import torch
    import yaml

    from models.loading import ModelSource, create_model, read_state_dict
    from models.timm_folder import write_timm_folder

    config = yaml.safe_load((run / "config.yaml").read_text())
    init, data_args = config["model"]["init_args"], dict(config["data"]["init_args"])
    if data_dir:
        data_args["data_dir"] = data_dir
    weights, hparams = read_state_dict(run / "checkpoints" / "last.ckpt")
    arch = init["model"]["name"]
    num_classes, in_chans = hparams["num_classes"], hparams["in_chans"]
    network, _ = create_model(ModelSource(arch), num_classes, in_chans)
    network.load_state_dict(weights)
    folder = zoo_dir / model.name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # the old one would refuse the new weights (sha256) below
    target = weights_path(zoo_dir, model.name)
    data_config = {
        "mean": tuple(hparams["data_mean"]),
        "std": tuple(hparams["data_std"]),
        "input_size": (in_chans, 28, 28),
        "crop_pct": 1.0,
    }
    classes = fashion_mnist.CLASSES[:num_classes]

    def write(dtype: torch.dtype) -> None:
        tensors = {k: v.to(dtype if v.is_floating_point() else v.dtype).contiguous() for k, v in weights.items()}
        write_timm_folder(network, tensors, folder, data_config, classes)

    scores = {}
    for dtype in (torch.float32, torch.float16):
        write(dtype)
        scores[str(dtype).removeprefix("torch.")], images = evaluate(
            ModelSource(arch, checkpoint=str(target)), num_classes, in_chans, data_args
        )
    kept = "float16" if scores["float16"] >= scores["float32"] - FP16_TOLERANCE else "float32"
    if kept == "float32":
        write(torch.float32)
    curve = [round(100 * v, 2) for v in read_scalars(run, "val/top1")]
    manifest = {
        "name": model.name,
        "role": model.role,
        "architecture": arch,
        "parameters": sum(p.numel() for p in network.parameters()),
        "num_classes": num_classes,
        "in_chans": in_chans,
        "mean": list(hparams["data_mean"]),
        "std": list(hparams["data_std"]),
        "val_top1": scores[kept],
        "val_top1_fp32_weights": scores["float32"],
        "val": f"the shipped weights on the {images:,} official Fashion-MNIST test images (fp32 compute)",
        "epoch_val_top1_last5": curve[-5:],
        "epochs": config["trainer"]["max_epochs"],
        "train_images": data_args.get("train_subset") or 60000,
        "selection": "last epoch (no selection on the test set)",
        "command": done["command"],
        "config": f"configs/fashion_mnist/zoo/{model.name}.yaml",
        "precision": config["trainer"].get("precision"),
        "wall_seconds": done["seconds"],
        **({"wall_note": done["note"]} if done.get("note") else {}),
        "machine": machine(),
        "weights": "model.safetensors",
        "weights_dtype": kept,
        "bytes": target.stat().st_size,
        "sha256": sha256(target),
        "versions": versions(),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"zoo: {model.name}: val top-1 {scores[kept]:.2f} ({kept}; fp32 {scores['float32']:.2f}), {manifest['bytes'] / 1e6:.2f} MB",
        flush=True,
    )
    return manifest


def evaluate(source, num_classes: int, in_chans: int, data_args: dict) -> tuple[float, int]:
    """Val top-1 (%) of the weights behind ``source``, loaded and scored as MEAL V2 loads and scores a teacher, and
    the image count."""
    from datamodules import FashionMNISTData
    from lightning_modules.teachers import TeacherEnsemble, build_teacher, teacher_scores

    data = FashionMNISTData(
        **{k: v for k, v in data_args.items() if k in ("data_dir", "in_chans", "download")}, batch_size=500
    )
    data.prepare_data()
    data.setup("validate")
    network = TeacherEnsemble([build_teacher(source, num_classes, in_chans, data.mean, data.std)])
    scores = teacher_scores(network, data.val_dataloader(), "cpu")
    return round(scores["teacher0"], 2), scores["images"]


def read_scalars(run_dir: Path, tag: str) -> list[float]:
    """Values of one scalar tag in a run's TensorBoard event files, in step order."""
    return read_scalar_tags(run_dir, [tag])[tag]


def read_scalar_tags(run_dir: Path, tags: list[str]) -> dict[str, list[float]]:
    """Values of each scalar tag in a run's TensorBoard event files, in step order (a resumed run's later value
    of a step wins); the files are read once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = {tag: [] for tag in tags}
    for file in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(file), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in set(tags) & set(accumulator.Tags()["scalars"]):
            events[tag] += [(e.step, e.wall_time, e.value) for e in accumulator.Scalars(tag)]
    result = {}
    for tag, found in events.items():
        by_step = {}
        for step, _, value in sorted(found, key=lambda e: (e[0], e[1])):
            by_step[step] = value
        result[tag] = [by_step[s] for s in sorted(by_step)]
    return result


def logged_seconds(run_dir: Path) -> float:
    """Wall time a run's TensorBoard event files span, each from its first event to its last: the time of a
    resumed run's earlier starts, read before it starts again (their set-up before the logger is not counted)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    total = 0.0
    for file in run_dir.glob("events.out.tfevents.*"):
        times = [event.wall_time for event in EventFileLoader(str(file)).Load()]
        total += times[-1] - times[0] if times else 0.0
    return total


def versions() -> dict:
    import lightning
    import timm
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
    }
