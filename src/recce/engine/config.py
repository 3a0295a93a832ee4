"""Training configuration: YAML files in `configs/` mapped onto dataclasses whose defaults are the paper's recipe.

A YAML file may name a `base:` file (relative to itself) whose values it overrides; `key.sub=value` overrides from
the command line come last. Unknown keys are errors that name the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, named before any training starts."""


@dataclass
class ModelSection:
    architecture: str = "recce"  # recce | xception (the baseline of the paper's tables)
    num_classes: int = 1  # 1: sigmoid / BCE as in the paper; 2: softmax / CE as in DeepfakeBench
    drop_rate: float = 0.2
    aggregation: str = "graph"  # graph | sum | concat | nonlocal (seed Table 2)
    multi_scale: bool = True  # False: single-scale graph reasoning (seed Table 2 (d))
    pretrained: str | None = None  # ImageNet Xception weights, e.g. xception-43020ad28.pth


@dataclass
class LossSection:
    lambda_reconstruction: float = 0.1
    lambda_metric: float = 0.1  # 0 switches the metric-learning loss off (seed Table 1 (b))
    flooding: float = 0.04
    reconstruct: str = "real"  # real | all (seed Table 1 (a))


@dataclass
class DataSection:
    manifest: str = ""
    datasets: list[str] | None = None
    methods: list[str] | None = None  # fakes of these methods (all reals are kept)
    compressions: list[str] | None = None
    train_split: str = "train"
    val_split: str | None = "val"  # model selection split; never the test split unless asked for explicitly
    size: int = 299
    flip_p: float = 0.5
    balance: bool = True  # each epoch: all of the smaller class and as many random frames of the larger one
    workers: int = 4
    val_limit: int | None = None  # validate on at most this many frames (a fixed random subset)


@dataclass
class OptimSection:
    lr: float = 2e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step_size: int = 22500  # StepLR stepped every iteration: x gamma every step_size iterations
    gamma: float = 0.5
    warmup_steps: int = 0  # linear warm-up (off in the official config)


@dataclass
class TrainSection:
    steps: int = 90000
    batch_size: int = 32  # per process
    val_batch_size: int = 64
    val_every: int = 1000
    log_every: int = 50
    checkpoint_every: int = 1000
    select_metric: str = "auc"  # auc | acc | ap | log_loss | eer (frame level, on the validation split)
    amp: str = "auto"  # auto | bf16 | fp16 | none
    channels_last: bool = True  # faster on GPUs and on the CPU
    compile: bool = False
    sync_bn: bool = True  # SyncBatchNorm when several processes train
    seed: int = 2022
    device: str = "auto"
    out: str = "runs/recce"


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    loss: LossSection = field(default_factory=LossSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SELECT_METRICS = {"auc": True, "acc": True, "ap": True, "log_loss": False, "eer": False}  # name -> higher is better


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path in seen:
        raise ConfigError(f"{path}: `base` files form a cycle")
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml((path.parent / base).resolve(), (*seen, path))
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _apply(config: TrainConfig, values: dict[str, Any], source: str) -> None:
    for section_name, section_values in values.items():
        if not hasattr(config, section_name):
            known = ", ".join(f.name for f in dataclasses.fields(config))
            raise ConfigError(f"{source}: unknown section {section_name!r} (known: {known})")
        section = getattr(config, section_name)
        if not isinstance(section_values, dict):
            raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
        known = {f.name for f in dataclasses.fields(section)}
        for key, value in section_values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {section_name}.{key} (known: {', '.join(sorted(known))})")
            setattr(section, key, value)


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The paper's defaults, then the YAML file (with its bases), then `section.key=value` overrides."""
    config = TrainConfig()
    if path is not None:
        _apply(config, _read_yaml(Path(path).resolve()), str(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.steps=1000")
        section, name = key.split(".", 1)
        _apply(config, {section: {name: yaml.safe_load(raw)}}, f"override {item!r}")
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Check values that can be checked without touching data."""
    t, d = config.train, config.data
    if config.model.architecture not in ("recce", "xception"):
        raise ConfigError(f"model.architecture must be recce or xception, got {config.model.architecture!r}")
    if t.select_metric not in SELECT_METRICS:
        raise ConfigError(f"train.select_metric must be one of {', '.join(SELECT_METRICS)}, got {t.select_metric!r}")
    for name in ("steps", "batch_size", "val_batch_size", "val_every", "log_every", "checkpoint_every"):
        if not isinstance(getattr(t, name), int) or getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be a positive integer, got {getattr(t, name)!r}")
    if not d.manifest:
        raise ConfigError("data.manifest is not set (the manifest written by `recce extract` or `recce synth`)")
    from recce.engine.runtime import AMP_MODES
    from recce.losses import RECONSTRUCTION_TARGETS
    from recce.models.graph_reasoning import AGGREGATIONS

    choices = {
        "train.amp": (t.amp, AMP_MODES),
        "model.aggregation": (config.model.aggregation, AGGREGATIONS),
        "model.num_classes": (config.model.num_classes, (1, 2)),
        "loss.reconstruct": (config.loss.reconstruct, RECONSTRUCTION_TARGETS),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    for name, value, least in (
        ("optim.step_size", config.optim.step_size, 1),
        ("optim.warmup_steps", config.optim.warmup_steps, 0),
        ("data.size", d.size, 32),
        ("data.workers", d.workers, 0),
    ):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"{name} must be an integer of at least {least}, got {value!r}")
    if d.val_split == d.train_split:
        raise ConfigError(f"data.val_split equals data.train_split ({d.train_split!r})")
    for name in ("datasets", "methods", "compressions"):
        value = getattr(d, name)
        if isinstance(value, str):
            setattr(d, name, [value])
    _check_ranges(config)
    _check_device(t.device)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_ranges(config: TrainConfig) -> None:
    """Optimiser, training and data values inside the ranges where they mean something."""
    o, t, d = config.optim, config.train, config.data
    checks = (
        ("optim.lr", o.lr, _number(o.lr) and o.lr > 0, "a positive number"),
        ("optim.weight_decay", o.weight_decay, _number(o.weight_decay) and o.weight_decay >= 0, "a number >= 0"),
        ("optim.eps", o.eps, _number(o.eps) and o.eps > 0, "a positive number"),
        ("optim.gamma", o.gamma, _number(o.gamma) and 0 < o.gamma <= 1, "a number in (0, 1]"),
        (
            "optim.betas",
            o.betas,
            isinstance(o.betas, (list, tuple))
            and len(o.betas) == 2
            and all(_number(b) and 0 <= b < 1 for b in o.betas),
            "two numbers in [0, 1)",
        ),
        (
            "train.seed",
            t.seed,
            isinstance(t.seed, int) and not isinstance(t.seed, bool) and 0 <= t.seed < 2**32 - 1024,
            "an integer in 0 .. 2**32 - 1025",
        ),
        ("data.flip_p", d.flip_p, _number(d.flip_p) and 0 <= d.flip_p <= 1, "a probability in [0, 1]"),
        (
            "data.val_limit",
            d.val_limit,
            d.val_limit is None
            or (isinstance(d.val_limit, int) and not isinstance(d.val_limit, bool) and d.val_limit > 0),
            "null or a positive integer",
        ),
    )
    for name, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"{name} must be {expected}, got {value!r}")


def _check_device(device: Any) -> None:
    """A device this machine has: a run asked for CUDA must not start, then fail, on a machine without it."""
    import torch

    if device == "auto":
        return
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"train.device={device} but no CUDA device is available here; use auto or cpu")
        if resolved.index is not None and resolved.index >= count:
            raise ConfigError(f"train.device={device} but this machine has {count} CUDA device(s)")
