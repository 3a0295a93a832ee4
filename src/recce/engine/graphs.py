"""A detector's P(fake) as a graph for CPU inference, in place of the eager model: `recce detect --runtime`.

`torchscript` traces and freezes the detector (batch norm folded into the convolutions, oneDNN layouts);
`onnxruntime` runs the project's own ONNX export (`recce export`) on ONNX Runtime's CPU execution provider. Both
take the preprocessed batch (any batch size, the detector's input size) and give P(fake) only: maps stay with the
eager model. A graph is checked against the eager model on a probe batch when it is built and refused, with the
reason, when they differ by more than `TOLERANCE`.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from recce.checkpoints import unwrap
from recce.detectors import Detector, fake_probability

RUNTIMES = ("torch", "torchscript", "onnxruntime")  # torch: the eager model (CPU or GPU)

# P(fake) within this of the eager model's: batch-norm folding and other kernels reorder float32 sums, which moves
# a score by a few ulps (at most 9e-8 measured, every detector at 64 px and at its own size); anything beyond it is
# a graph computing something else.
TOLERANCE = 1e-6

ScoreGraph = Callable[[torch.Tensor], torch.Tensor]  # preprocessed CPU batch -> P(fake) per image


class GraphError(ValueError):
    """A detector that cannot run exactly in a runtime; the message names the detector, runtime and reason."""


def frozen_graph(model: nn.Module) -> ScoreGraph:
    """The detector's P(fake) as a traced, frozen TorchScript graph optimised for CPU inference."""
    from recce.export import ExportWrapper

    detector = unwrap(model).eval().cpu()
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced at the fixed input size
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
        traced = torch.jit.trace(ExportWrapper(detector, []).eval(), _example(detector, 2), check_trace=False)
        graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    return lambda images: graph(images)[0]


def onnx_graph(model: nn.Module) -> ScoreGraph:
    """The detector's P(fake) exported by `export_onnx` (through a temporary file) and run by ONNX Runtime on the
    CPU with torch's thread count as its intra-op threads (`recce detect --threads` sets both)."""
    import onnxruntime

    from recce.export import export_onnx

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: not constant-folding the exporter's CastLike nodes is a notice
    with tempfile.TemporaryDirectory(prefix="recce-onnx-") as folder:
        path = export_onnx(unwrap(model), Path(folder) / "detector.onnx", maps=False)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["p_fake"], {"image": images.contiguous().numpy()})[0])


def cpu_graph(model: nn.Module, runtime: str) -> ScoreGraph | None:
    """The graph of `runtime` (None for torch, the eager model), checked against the eager model; GraphError when
    it cannot be built or does not give the eager scores."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "torch":
        return None
    detector = unwrap(model).eval().cpu()
    try:
        graph = frozen_graph(detector) if runtime == "torchscript" else onnx_graph(detector)
        probe = _example(detector, 3)  # another batch size than the traced one
        with torch.inference_mode():
            difference = float((graph(probe) - fake_probability(detector(probe).logits)).abs().max())
    except Exception as error:  # the tracer's or exporter's failure on this network is a refusal, with its reason
        reason = f"{error.__class__.__name__}: {_first_line(error)}"
        raise GraphError(
            f"runtime {runtime} cannot run detector {detector.name} ({reason}); use --runtime torch"
        ) from error
    if not difference <= TOLERANCE:
        raise GraphError(
            f"runtime {runtime} refused for detector {detector.name}: its P(fake) differs from eager torch by "
            f"{difference:.1e} on a probe batch (more than {TOLERANCE:.0e}); use --runtime torch"
        )
    return graph


def _example(detector: Detector, batch: int) -> torch.Tensor:
    size = detector.preprocess.input_size
    generator = torch.Generator().manual_seed(batch)
    return torch.rand(batch, detector.input_channels, size, size, generator=generator) * 2 - 1


def _first_line(error: BaseException) -> str:
    """What failed: the exporters put it first (with terminal colours) and a long trace of the graph after it."""
    lines = (re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines())
    return next((line for line in lines if line), "no message")
