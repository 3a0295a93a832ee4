"""Training configuration: YAML files in `configs/` mapped onto dataclasses whose defaults are the paper's recipe.

The `model` section names the detector (`name: rfm`); its other keys are that detector's `Config` fields, and the
`loss` section its `Loss` fields, both checked against the detector's own dataclasses. A YAML file may name a
`base:` file (relative to itself) whose values it overrides; when it names another detector than its base, the
base's model and loss sections are dropped. `key.sub=value` overrides from the command line come last. Unknown keys
are errors that name the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recce.detectors import Detector, DetectorConfigError, Preprocess, detector_class
from recce.detectors.base import build_dataclass
from recce.fields import field_comments


class ConfigError(ValueError):
    """A configuration problem, named before any training starts."""


@dataclass
class ModelSection:
    name: str = "recce"  # a registered detector (`recce models`)
    pretrained: str | None = None  # ImageNet backbone weights, e.g. xception-43020ad28.pth; null: random init
    init_from: str | None = None  # a checkpoint of ours whose matching weights start this run (two-stage recipes)
    options: dict[str, Any] = field(default_factory=dict)  # the detector's Config fields


MODEL_KEYS = ("name", "pretrained", "init_from")


@dataclass
class DataSection:
    manifest: str = ""  # the manifest written by `recce extract` or `recce synth`
    datasets: list[str] | None = None  # datasets of the manifest trained on (null: all)
    methods: list[str] | None = None  # fakes of these methods (all reals are kept)
    compressions: list[str] | None = None  # e.g. [c23] (null: all)
    train_split: str = "train"  # the manifest split trained on
    val_split: str | None = "val"  # model selection split; never the test split unless asked for explicitly
    size: int | None = None  # input side; null: the detector's own preprocessing (RECCE 299)
    resize: int | None = None  # with `size`: resize to this side, then crop `size` (random in training)
    mean: list[float] | None = None  # normalisation; null: the detector's
    std: list[float] | None = None  # normalisation; null: the detector's
    flip_p: float = 0.5  # probability of a horizontal flip in training
    balance: bool = True  # each epoch: all of the smaller class and as many random frames of the larger one
    workers: int = 4  # DataLoader worker processes (0: load in the training process)
    order: str = "shuffle"  # shuffle: global (the paper's); shards: packed crops read a window of shards at a time
    shard_window: int = 4  # with order shards: rows are shuffled within this many consecutive shards
    val_limit: int | None = None  # validate on at most this many frames (a fixed random subset)
    shared_rows: bool = True  # rows memory-mapped from <train.out>/rows/, shared by a node's processes


@dataclass
class OptimSection:
    name: str = "adam"  # adam | adamw
    lr: float = 2e-4  # initial learning rate
    weight_decay: float = 1e-5  # L2 penalty (Adam) or decoupled decay (AdamW)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decay rates
    eps: float = 1e-8  # Adam's denominator term
    step_size: int = 22500  # StepLR stepped every iteration: x gamma every step_size iterations
    step_epochs: float | None = None  # instead of step_size: x gamma every this many training epochs
    gamma: float = 0.5  # learning-rate factor at each step of the schedule (1.0: constant)
    warmup_steps: int = 0  # linear warm-up (off in the official config)


@dataclass
class TrainSection:
    steps: int = 90000  # training iterations
    batch_size: int = 32  # per process
    val_batch_size: int = 64  # crops per forward pass in validation
    val_every: int = 1000  # validate (and select) every this many iterations
    log_every: int = 50  # average and log the loss terms every this many iterations
    checkpoint_every: int = 1000  # write last.pt (the resumable state) every this many iterations
    select_metric: str = "auc"  # auc | acc | ap | log_loss | eer (frame level, on the validation split)
    amp: str = "auto"  # auto | bf16 | fp16 | none
    channels_last: bool = True  # faster on GPUs and on the CPU
    compile: bool = False  # torch.compile the model
    sync_bn: bool = True  # SyncBatchNorm when several processes train
    seed: int = 2022  # seeds initialisation, sampling and augmentation
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    out: str = "runs/recce"  # the run folder (checkpoints, logs, metrics)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    loss: dict[str, Any] = field(default_factory=dict)  # the detector's Loss fields
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        """As YAML would state it: the model's options inline, every section complete."""
        values = dataclasses.asdict(self)
        model = values["model"]
        values["model"] = {key: model[key] for key in MODEL_KEYS} | dataclasses.asdict(self.detector_config())
        values["loss"] = dataclasses.asdict(self.loss_config())
        return values

    def detector_class(self) -> type[Detector]:
        try:
            return detector_class(self.model.name)
        except DetectorConfigError as error:
            raise ConfigError(f"model.name: {error}") from None

    def detector_config(self) -> Any:
        try:
            return build_dataclass(self.detector_class().Config, self.model.options, "model")
        except DetectorConfigError as error:
            raise ConfigError(str(error)) from None

    def loss_config(self) -> Any:
        try:
            return build_dataclass(self.detector_class().Loss, self.loss, "loss")
        except DetectorConfigError as error:
            raise ConfigError(str(error)) from None

    def preprocess(self) -> Preprocess:
        """The detector's preprocessing with the data section's overrides."""
        d = self.data
        base = self.detector_class().default_preprocess
        if d.size is not None:
            base = dataclasses.replace(base, input_size=d.size, resize=d.resize)
        try:
            return dataclasses.replace(base, mean=tuple(d.mean or base.mean), std=tuple(d.std or base.std))
        except DetectorConfigError as error:
            raise ConfigError(f"data: {error}") from None

    def describe(self) -> list[tuple[str, Any, Any, str]]:
        """(key, value, default, meaning) for every key, in file order: what `recce train --show-config` prints."""
        cls = self.detector_class()
        values = self.to_dict()
        defaults = TrainConfig(model=ModelSection(name=self.model.name)).to_dict()
        meanings = {
            "model": field_comments(ModelSection) | field_comments(cls.Config),
            "loss": field_comments(cls.Loss),
            "data": field_comments(DataSection),
            "optim": field_comments(OptimSection),
            "train": field_comments(TrainSection),
        }
        return [
            (f"{section}.{key}", value, defaults[section].get(key), meanings[section].get(key, ""))
            for section, items in values.items()
            for key, value in items.items()
        ]

    def build_detector(self) -> Detector:
        """The detector this configuration trains, with its ImageNet weights when `model.pretrained` names them."""
        detector = self.detector_class()(self.detector_config(), self.preprocess())
        if self.model.pretrained:
            detector.load_pretrained(self.model.pretrained)
        return detector


OPTIMIZERS = ("adam", "adamw")
DATA_ORDERS = ("shuffle", "shards")
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
    if _detector_name(data) not in (None, _detector_name(merged)):  # another detector: start from its defaults
        merged.pop("model", None)
        merged.pop("loss", None)
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _detector_name(values: dict[str, Any]) -> str | None:
    model = values.get("model")
    if not isinstance(model, dict):
        return None
    return model.get("name", model.get("architecture"))


def _apply(config: TrainConfig, values: dict[str, Any], source: str) -> None:
    for section_name, section_values in values.items():
        if not hasattr(config, section_name):
            known = ", ".join(f.name for f in dataclasses.fields(config))
            raise ConfigError(f"{source}: unknown section {section_name!r} (known: {known})")
        section = getattr(config, section_name)
        if not isinstance(section_values, dict):
            raise ConfigError(f"{source}: section {section_name!r} must be a mapping")
        if section_name == "loss":  # checked against the detector's Loss once the detector is known
            section.update(section_values)
            continue
        if section_name == "model":
            for key, value in section_values.items():
                key = "name" if key == "architecture" else key  # the first config format's spelling
                if key in MODEL_KEYS:
                    setattr(section, key, value)
                else:
                    section.options[key] = value
            continue
        known = {f.name for f in dataclasses.fields(section)}
        for key, value in section_values.items():
            if key not in known:
                raise ConfigError(f"{source}: unknown key {section_name}.{key} (known: {', '.join(sorted(known))})")
            setattr(section, key, value)


def _moved_config(path: Path) -> Path:
    """Configs moved to configs/<detector>/<dataset>.yaml: the old flat names still work, with a warning."""
    if path.exists():
        return path
    detector, _, rest = path.stem.partition("_")
    for moved in (path.parent / detector / f"{rest}{path.suffix}", path.parent / "recce" / path.name):
        if rest and moved.is_file():
            print(f"recce: {path} moved to {moved}; the old name is deprecated", file=sys.stderr)
            return moved
    return path


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """The paper's defaults, then the YAML file (with its bases), then `section.key=value` overrides."""
    config = TrainConfig()
    if path is not None:
        _apply(config, _read_yaml(_moved_config(Path(path)).resolve()), str(path))
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
    config.detector_config()
    config.loss_config()
    config.preprocess()
    if t.select_metric not in SELECT_METRICS:
        raise ConfigError(f"train.select_metric must be one of {', '.join(SELECT_METRICS)}, got {t.select_metric!r}")
    for name in ("steps", "batch_size", "val_batch_size", "val_every", "log_every", "checkpoint_every"):
        if not isinstance(getattr(t, name), int) or getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be a positive integer, got {getattr(t, name)!r}")
    from recce.engine.runtime import AMP_MODES

    choices = {"train.amp": (t.amp, AMP_MODES), "optim.name": (config.optim.name, OPTIMIZERS)}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    for name, value, least in (
        ("optim.step_size", config.optim.step_size, 1),
        ("optim.warmup_steps", config.optim.warmup_steps, 0),
        ("data.size", d.size if d.size is not None else 32, 32),
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
        ("data.order", d.order, d.order in DATA_ORDERS, f"one of {', '.join(DATA_ORDERS)}"),
        (
            "data.shard_window",
            d.shard_window,
            isinstance(d.shard_window, int) and not isinstance(d.shard_window, bool) and d.shard_window > 0,
            "a positive integer",
        ),
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
