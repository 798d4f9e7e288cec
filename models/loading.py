"""Build a timm model from a name plus a weight source: the hub, a local file, or nothing."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union
from urllib.parse import urlparse

import timm
import torch
from timm.models import clean_state_dict
from torch import nn

from errors import ModelLoadingError, reason
from models import cifar_resnets  # noqa: F401  (registers the small-image backbones)
from storage.atomic_files import verify_file


@dataclass
class ModelSource:
    """Which architecture to build and where its weights come from.

    name: a timm model name (``resnet50.a1_in1k``, ``cifar_resnet56``, ...).
    pretrained: download the hub weights of ``name`` (needs network access).
    checkpoint: a local weights file: plain state_dict (.pt/.pth/.bin), .safetensors,
        or a Lightning checkpoint of ``Classifier`` (its model) or ``MealV2`` (its student).
    mean/std: the input normalization the weights expect; read from the checkpoint or
        timm's pretrained config when left empty.
    model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. drop_path_rate).
    new_head: fine-tuning: ``checkpoint`` (or hub weights) trained for another number of classes keeps
        its body and gets a new, randomly initialized classifier for the data's classes (not for teachers).
    """

    name: str
    pretrained: bool = False
    checkpoint: Optional[str] = None
    new_head: bool = False
    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Union["ModelSource", dict, str]) -> "ModelSource":
        """Accept the dataclass, its dict form (as stored in checkpoints) or a bare model name."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, dict):
            return cls(**value)
        raise TypeError(f"Expected a model source (name / dict / ModelSource), got {type(value).__name__}")

    def to_dict(self) -> dict:
        """A plain-dict form that `torch.load(weights_only=True)` accepts inside checkpoints."""
        data = asdict(self)
        for key in ("mean", "std"):
            if data[key] is not None:
                data[key] = [float(v) for v in data[key]]
        return data


def data_facts(num_classes, in_chans, data_mean, data_std) -> tuple[int, int, list[float], list[float]]:
    """The data's classes, channels and normalization (linked from the DataModule by the CLI); ImageNet's when not given."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    num_classes = 1000 if num_classes is None else num_classes
    in_chans = 3 if in_chans is None else in_chans
    data_mean = IMAGENET_DEFAULT_MEAN if data_mean is None else data_mean
    data_std = IMAGENET_DEFAULT_STD if data_std is None else data_std
    return num_classes, in_chans, [float(v) for v in data_mean], [float(v) for v in data_std]


def check_model_name(name: str) -> None:
    """Raise a one-line error naming close matches when timm does not know ``name``."""
    arch = name.split(".")[0]
    if timm.is_model(arch):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models() for the known names."
    raise ModelLoadingError(f"Unknown timm model '{name}'.{hint}")


def read_state_dict(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (state_dict, hyper_parameters) from a weights file of any supported kind, without the prefixes of a
    DDP-wrapped or ``torch.compile``'d model (``module.``, ``_orig_mod.``; timm's cleaning)."""
    state_dict, hparams = _read_state_dict(Path(path))
    return clean_state_dict(state_dict), hparams


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.is_file():
        raise ModelLoadingError(f"Checkpoint file '{path}' does not exist: fix the path or train that model first.")

    check_manifest(path)
    if path.suffix == ".safetensors":
        tensors = _read_safetensors(path)
        verify_file(path, tensors)  # against the sha256 in its header, when it has one
        return tensors, {}
    verify_file(path)  # a checkpoint's zip checksums
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many different types on corrupt files
        raise ModelLoadingError(
            f"Cannot read checkpoint '{path}' ({reason(err)}): it is corrupt or not a weights file; re-create or re-download it."
        ) from None
    if not isinstance(blob, dict):
        raise ModelLoadingError(
            f"Checkpoint '{path}' holds a {type(blob).__name__}, not a state_dict: save model.state_dict()."
        )
    if "pytorch-lightning_version" in blob or ("state_dict" in blob and "hyper_parameters" in blob):
        return _model_weights_from_lightning(blob["state_dict"], path), dict(blob.get("hyper_parameters", {}))
    for key in ("state_dict", "model", "state_dict_ema"):
        if key in blob and isinstance(blob[key], dict):
            blob = blob[key]
            break
    return {k: v for k, v in blob.items() if isinstance(v, torch.Tensor)}, {}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types on a broken header
        raise ModelLoadingError(
            f"Cannot read weights '{path}' ({reason(err)}): it is corrupt or not a safetensors file; re-create or re-download it."
        ) from None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(model: nn.Module) -> str:
    """sha256 of a model's state_dict (names, dtypes and bytes, in order): which weights, whatever file held them."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_manifest(path: Path) -> None:
    """A weights file with a ``manifest.json`` beside it (the model zoo's) must match the sha256 recorded there."""
    manifest_path = path.parent / "manifest.json"
    if not manifest_path.is_file():
        return
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        raise ModelLoadingError(f"'{manifest_path}' beside '{path}' cannot be read: restore it or remove it.") from None
    if not isinstance(manifest, dict) or manifest.get("weights") != path.name or "sha256" not in manifest:
        return
    actual = file_sha256(path)
    if actual != manifest["sha256"]:
        raise ModelLoadingError(
            f"Weights '{path}' do not match the sha256 in '{manifest_path}' ({actual[:12]} != "
            f"{manifest['sha256'][:12]}): they were replaced or damaged; restore them (git checkout) or rebuild them."
        )


def _model_weights_from_lightning(state_dict: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    for prefix in ("model.", "student."):
        weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if weights:
            return weights
    raise ModelLoadingError(
        f"Lightning checkpoint '{path}' has no 'model.' (Classifier) or 'student.' (MealV2) weights: it is from another project."
    )


def create_model(
    source: ModelSource, num_classes: int, in_chans: int = 3, keep_pretrained_head: bool = False
) -> tuple[nn.Module, dict]:
    """Build the model and load its weights; returns (model, hyper_parameters of the checkpoint).

    ``keep_pretrained_head``: refuse hub weights whose classifier has another number of classes
    (timm would silently replace it with a random head; fine for a student, useless for a teacher).
    """
    check_model_name(source.name)
    if source.new_head and keep_pretrained_head:
        raise ModelLoadingError(
            f"Teacher '{source.name}' has new_head: true: a teacher with a random head teaches nothing; fine-tune it "
            "with the Classifier module (model.new_head: true) and give the teacher that checkpoint."
        )
    hparams: dict = {}
    if source.checkpoint:
        state_dict, hparams = read_state_dict(source.checkpoint)
        model = timm.create_model(
            source.name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **source.model_kwargs
        )
        if source.new_head:
            state_dict = _with_new_head(model, state_dict)
        _load_strict(model, state_dict, source, teacher=keep_pretrained_head)
    else:
        if source.pretrained and keep_pretrained_head:
            _check_pretrained_head(source.name, num_classes)
        if source.pretrained:
            check_hub_weights_reachable(source.name)
        model = timm.create_model(
            source.name, pretrained=source.pretrained, num_classes=num_classes, in_chans=in_chans, **source.model_kwargs
        )
    _record_input_channels(model, in_chans)
    return model, hparams


def _with_new_head(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's weights with the model's own freshly initialized classifier where the checkpoint's has another shape."""
    expected, head = model.state_dict(), _head_prefix(model)
    return {
        k: expected[k] if head and k.startswith(head) and k in expected and v.shape != expected[k].shape else v
        for k, v in state_dict.items()
    }


def _head_prefix(model: nn.Module) -> Optional[str]:
    """The state_dict prefix of the model's classifier (``fc.``, ``head.fc.``, ``classifier.``...), if timm names one."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return next((f"{n}." for n, m in model.named_modules() if m is head and n), None)


def check_hub_weights_reachable(name: str) -> None:
    """Hub weights that are not in the local cache need the hub: without network stop in one line at once,
    instead of a minute of download retries and a long traceback."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return  # timm says what is wrong with the name; a proxy: let the download try
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg.hf_hub_id.split("@")[0]
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
            return
        where = urlparse(constants.ENDPOINT)
        cache = "~/.cache/huggingface (HF_HOME)"
    elif cfg.url:
        if (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name).is_file():
            return
        where, cache = urlparse(cfg.url), f"{torch.hub.get_dir()}/checkpoints (TORCH_HOME)"
    else:
        return
    port = where.port or (443 if where.scheme == "https" else 80)
    try:
        socket.create_connection((where.hostname, port), timeout=5).close()
    except OSError as error:
        raise ModelLoadingError(
            f"Pretrained weights of '{name}' are not in the local cache and {where.hostname} cannot be reached "
            f"({error.strerror or error}): download them once with network (timm caches them in {cache}), "
            "or give a local weights file as checkpoint: PATH."
        ) from None


def _record_input_channels(model: nn.Module, in_chans: int) -> None:
    """timm keeps the pretrained config's 3 channels after ``in_chans=1``; make exports describe the model."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg and cfg.get("input_size") and cfg["input_size"][0] != in_chans:
        model.pretrained_cfg = {**cfg, "input_size": (in_chans, *cfg["input_size"][1:])}


def _check_pretrained_head(name: str, num_classes: int) -> None:
    cfg = timm.models.get_pretrained_cfg(name)
    hub_classes = getattr(cfg, "num_classes", None) if cfg is not None else None
    if hub_classes and hub_classes != num_classes:
        raise ModelLoadingError(
            f"Teacher '{name}' has pretrained weights for {hub_classes} classes but the data has {num_classes}: "
            "a teacher must predict the data's classes; fine-tune it with the Classifier module and use its checkpoint."
        )


def _load_strict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: ModelSource, teacher: bool = False
) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ModelLoadingError(
            f"Checkpoint '{source.checkpoint}' does not fit '{source.name}': "
            f"{len(missing)} missing keys (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]}); "
            "check the model name."
        )
    for key, tensor in state_dict.items():
        if tensor.shape != expected[key].shape:
            fine_tune = (
                "a teacher must be trained for the data's classes: fine-tune it with the Classifier module "
                "(model.new_head: true) and give the teacher that checkpoint"
                if teacher
                else "to fine-tune it to the data's classes, set new_head: true beside checkpoint:"
            )
            hint = f" ({fine_tune})" if (head := _head_prefix(model)) and key.startswith(head) else ""
            raise ModelLoadingError(
                f"Checkpoint '{source.checkpoint}' does not fit '{source.name}': '{key}' has shape {tuple(tensor.shape)}, "
                f"the model needs {tuple(expected[key].shape)}; check num_classes / in_chans of the data and the checkpoint{hint}."
            )
    model.load_state_dict(state_dict, strict=True)


def expected_normalization(
    source: ModelSource, model: nn.Module, hparams: dict, data_mean: tuple[float, ...], data_std: tuple[float, ...]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) the model's weights were trained with.

    Order: explicit in the source; recorded in a Lightning checkpoint; the ``config.json`` beside a
    weights file in timm's export format (exported students, the model zoo); timm's pretrained config
    when the weights come from the hub or a hub-format file; else the data's own normalization.
    """
    if source.mean is not None and source.std is not None:
        return tuple(source.mean), tuple(source.std)
    if hparams.get("data_mean") is not None and hparams.get("data_std") is not None:
        return tuple(hparams["data_mean"]), tuple(hparams["data_std"])
    exported = exported_pretrained_cfg(source.checkpoint) if source.checkpoint else {}
    if exported.get("mean") is not None and exported.get("std") is not None:
        return tuple(exported["mean"]), tuple(exported["std"])
    if source.pretrained or (source.checkpoint and not hparams):
        cfg = timm.data.resolve_model_data_config(model)
        if len(cfg["mean"]) == len(data_mean):
            return tuple(cfg["mean"]), tuple(cfg["std"])
    return tuple(data_mean), tuple(data_std)


def exported_pretrained_cfg(checkpoint: Union[str, Path]) -> dict:
    """``pretrained_cfg`` of the timm export ``config.json`` next to a weights file, or {} if there is none."""
    config = Path(checkpoint).parent / "config.json"
    if not config.is_file():
        return {}
    try:
        return dict(json.loads(config.read_text()).get("pretrained_cfg") or {})
    except (json.JSONDecodeError, AttributeError):
        raise ModelLoadingError(
            f"'{config}' beside the weights is not timm's export config.json: fix or remove it."
        ) from None
