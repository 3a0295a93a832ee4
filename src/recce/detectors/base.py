"""What every forgery detector provides, so that the engine, checkpoints, reports and tools never name one.

A detector is one module in this package: a `Detector` subclass with its configuration dataclass (`Config`, which
rebuilds the network and is stored in checkpoints), its loss dataclass (`Loss`: loss weights and training-procedure
knobs), its default preprocessing, the maps it can show, and where its reference comes from. `forward(x)` returns a
`DetectorOutput`; the engine calls `training_step`, which is forward + loss unless a method needs more (RFM's
gradient-guided erasing, MultiAtt's second augmented pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from recce.losses import classification_loss, flood

SOURCES = ("official code", "port", "re-implementation")
MAP_KINDS = ("heatmap", "image")  # heatmap: B x 1 x h x w, larger = more attention; image: B x 3 x H x W, normalised


class DetectorConfigError(ValueError):
    """A detector configuration that cannot be built; the message names the key."""


@dataclass(frozen=True)
class Preprocess:
    """How pixels must be prepared for a detector; recorded in checkpoints so every consumer feeds it correctly.

    Crops are resized to `resize` (or straight to `input_size` when None), centre-cropped to `input_size` (randomly
    cropped in training), and normalised per channel: (x / 255 - mean) / std. With `face_mask` the tensor gets a
    4th channel, the soft face mask in [0, 1] rendered from the crop's landmarks (`recce.data.faces.mask`), cropped
    and flipped with the image, so every consumer keeps passing one tensor.
    """

    input_size: int = 299
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resize: int | None = None
    face_mask: bool = False  # append the landmark face mask as a 4th input channel (Add-Net)

    def __post_init__(self):
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not isinstance(self.input_size, int) or not 1 <= self.input_size <= 2048:
            raise DetectorConfigError(f"input size must be an integer in 1..2048, got {self.input_size!r}")
        if self.resize is not None and (not isinstance(self.resize, int) or not self.input_size <= self.resize <= 4096):
            raise DetectorConfigError(f"resize must be an integer in {self.input_size}..4096, got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DetectorConfigError(f"mean and std need three values, std positive; got {self.mean}, {self.std}")

    @property
    def load_size(self) -> int:
        """The side crops are resized to before the centre (or random) crop."""
        return self.resize or self.input_size

    def at_size(self, size: int | None) -> Preprocess:
        """The same preprocessing at another input size (the load size scaled alike); None keeps this one."""
        if size is None or size == self.input_size:
            return self
        resize = None if self.resize is None else round(self.resize * size / self.input_size)
        return dataclasses.replace(self, input_size=int(size), resize=resize)

    def to_dict(self) -> dict[str, Any]:
        """The fields; `face_mask` only when set, so every other detector's record stays as it was."""
        values = dataclasses.asdict(self)
        if not self.face_mask:
            del values["face_mask"]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Preprocess:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def denormalise(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised B x 3 x H x W (the RGB channels of a masked input) back to [0, 1]."""
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images[:, :3].float() * std + mean).clamp(0, 1)


class DetectorOutput(NamedTuple):
    """One result type for every detector; a NamedTuple so DDP and torch.compile pass it through.

    `maps` holds the named maps the detector can show (kinds in `Detector.map_kinds`); `aux` what only its loss
    needs (RECCE's similarity matrices, MultiAtt's pooled features).
    """

    logits: torch.Tensor  # (B, 1) sigmoid or (B, 2) softmax
    maps: dict[str, torch.Tensor]
    aux: dict[str, Any]


def fake_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(fake) per sample for a one-logit (sigmoid) or two-logit (softmax) head."""
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits.float())[..., 0]
    return torch.softmax(logits.float(), dim=-1)[..., 1]


def build_dataclass(kind: type, values: Mapping[str, Any], what: str) -> Any:
    """`kind(**values)` with one-line errors naming unknown keys (`what` prefixes them, e.g. "model")."""
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DetectorConfigError(f"unknown key {what}.{unknown[0]} (known: {', '.join(sorted(known))})")
    try:
        return kind(**values)
    except DetectorConfigError:
        raise
    except (TypeError, ValueError) as error:
        message = str(error)  # a field's own check names it first: say "model.aggregation must be ..."
        joined = f"{what}.{message}" if message.split(" ", 1)[0] in known else f"{what}: {message}"
        raise DetectorConfigError(joined) from None


@dataclass(frozen=True)
class ClassificationLoss:
    """Flooded classification loss (flooding 0: plain BCE / cross-entropy)."""

    flooding: float = 0.0  # flooding level b of the classification loss (0: off)


class Detector(nn.Module):
    """Base class of forgery detectors. Subclasses set the class attributes and implement `forward`."""

    name: ClassVar[str] = ""  # registry name, written into checkpoints
    Config: ClassVar[type]  # frozen dataclass with `num_classes`; rebuilds the network
    Loss: ClassVar[type] = ClassificationLoss  # frozen dataclass: loss weights, training-procedure knobs
    default_preprocess: ClassVar[Preprocess] = Preprocess()
    map_kinds: ClassVar[dict[str, str]] = {}  # map name -> "heatmap" | "image"
    source: ClassVar[str] = "re-implementation"  # one of SOURCES
    paper: ClassVar[str] = ""
    reference: ClassVar[str] = ""  # the code or text the implementation follows
    choices: ClassVar[tuple[str, ...]] = ()  # Config/Loss fields that are this project's choices, not a reference's
    backbone: ClassVar[str] = "legacy_xception"  # the timm network it builds on (benchmarks measure it alongside)
    pretrained_source: ClassVar[str] = ""  # where to obtain the backbone's ImageNet weights (text, no download)

    def __init__(self, config: Any | None = None, preprocess: Preprocess | None = None, **options: Any):
        super().__init__()
        config = self.Config() if config is None else config
        if options:
            config = build_dataclass(self.Config, {**dataclasses.asdict(config), **options}, self.name or "model")
        if config.num_classes not in (1, 2):
            raise DetectorConfigError(f"num_classes must be 1 (sigmoid) or 2 (softmax), got {config.num_classes}")
        self.config = config
        self.preprocess = preprocess or self.default_preprocess

    @property
    def input_channels(self) -> int:
        """Channels of the input tensor (3; a detector that takes extra planes, such as a face mask, says more)."""
        return 3

    @property
    def head(self) -> str:
        return "sigmoid" if self.config.num_classes == 1 else "softmax"

    def forward(self, x: torch.Tensor) -> DetectorOutput:
        raise NotImplementedError

    def explain(self, x: torch.Tensor) -> DetectorOutput:
        """The forward output with every map of `map_kinds`, including those that cost more than a forward pass."""
        return self(x)

    def loss(self, output: DetectorOutput, images: torch.Tensor, labels: torch.Tensor, cfg: Any) -> dict[str, Any]:
        """Named loss terms, all logged; "total" is optimised."""
        classification = classification_loss(output.logits, labels)
        flooded = flood(classification, cfg.flooding)
        return {"total": flooded, "classification": classification}

    def training_step(
        self, images: torch.Tensor, labels: torch.Tensor, forward: Callable[[torch.Tensor], DetectorOutput], cfg: Any
    ) -> dict[str, torch.Tensor]:
        """Losses of one training batch; `forward` is the engine's (possibly DDP-wrapped or compiled) module."""
        return self.loss(forward(images), images, labels, cfg)

    def epoch_end(self, epoch: int) -> None:
        """Called by the engine after each training epoch (MultiAtt decays its centre rate here)."""

    def load_pretrained(self, path: str) -> None:
        """Load the backbone's ImageNet weights from a local file."""
        raise DetectorConfigError(f"{self.name}: no pretrained backbone weights can be loaded")

    @classmethod
    def from_reference(cls, state: Mapping[str, torch.Tensor], source: str, **options: Any) -> Detector:
        """Build from published weights (the authors' or DeepfakeBench's state dict), in eval mode."""
        from recce.weights import CheckpointError

        raise CheckpointError(f"{source}: no importer for {cls.name} weights")

    def chosen(self, loss: Any | None = None) -> dict[str, Any]:
        """The values of this detector's own choices (`choices`), from its config and the loss configuration used."""
        values = {**dataclasses.asdict(loss if loss is not None else self.Loss()), **dataclasses.asdict(self.config)}
        return {name: values[name] for name in self.choices}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """What `recce models` prints: defaults, preprocessing, maps, source and the project's own choices."""
        return {
            "name": cls.name,
            "paper": cls.paper,
            "source": cls.source,
            "reference": cls.reference,
            "preprocess": cls.default_preprocess.to_dict(),
            "maps": dict(cls.map_kinds),
            "config": dataclasses.asdict(cls.Config()),
            "loss": dataclasses.asdict(cls.Loss()),
            "choices": list(cls.choices),
        }
