"""ONNX export of any detector: P(fake) and the detector's forward maps, with its preprocessing in the metadata.

The exported graph takes images already preprocessed as the metadata says (resize, crop, normalisation) and has a
dynamic batch axis. Maps that need gradients (RFM's attention map, computed by `explain`) are not part of the
graph; the metadata lists the outputs the file has.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from recce import __version__
from recce.checkpoints import unwrap
from recce.detectors import Detector, fake_probability


class ExportWrapper(nn.Module):
    """`p_fake` then the forward maps, in `outputs` order, as plain tensors."""

    def __init__(self, detector: Detector, outputs: list[str]):
        super().__init__()
        self.detector = detector
        self.outputs = outputs

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        result = self.detector(images)
        return (fake_probability(result.logits), *(result.maps[name] for name in self.outputs))


def forward_maps(detector: Detector) -> list[str]:
    """The declared maps a forward pass gives (explain-only maps are left out)."""
    size = detector.preprocess.input_size
    with torch.no_grad():
        produced = detector.eval()(torch.zeros(1, detector.input_channels, size, size)).maps
    return [name for name in detector.map_kinds if name in produced]


def export_onnx(
    model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None, maps: bool = True
) -> Path:
    """Write `path` atomically; returns it. `metadata` adds entries (e.g. the source checkpoint); without `maps`
    the graph gives P(fake) alone (`recce detect --runtime onnxruntime` needs nothing else)."""
    import onnx

    detector = unwrap(model).eval().cpu()
    outputs = forward_maps(detector) if maps else []
    size = detector.preprocess.input_size
    example = torch.zeros(2, detector.input_channels, size, size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    program = torch.onnx.export(
        ExportWrapper(detector, outputs).eval(),
        (example,),
        input_names=["image"],
        output_names=["p_fake", *outputs],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        optimize=False,
        verbose=False,
    )
    program.save(str(tmp))
    proto = onnx.load(str(tmp))
    entries = {
        "detector": detector.name,
        "preprocess": json.dumps(detector.preprocess.to_dict()),
        "outputs": json.dumps(["p_fake", *outputs]),
        "map_kinds": json.dumps({name: detector.map_kinds[name] for name in outputs}),
        "recce_version": __version__,
        **(metadata or {}),
    }
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)
    return path
