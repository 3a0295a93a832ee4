"""Model throughput of the detectors, each beside its plain backbone and RECCE beside the official loop, in one run.

Times the training step (the detector's own `training_step`: forward, loss and any extra pass such as RFM's
attention map or MultiAtt's second pass; backward; Adam), inference and, for RECCE, the graph-reasoning module
alone, on synthetic tensors already on the device. `--models` takes registered detector names (`recce models`),
`looped` (RECCE with the official per-position graph loop, the baseline of the vectorised one) and
`backbone:<timm name>` (the plain network with a two-way head and cross-entropy, e.g. `backbone:legacy_xception`);
each detector's backbone is added automatically, so every detector is measured beside it. Machines are shared and
absolute numbers drift, so ratios measured side by side are the figures to trust.

    python benchmarks/model_throughput.py --device cuda --dtype bf16 --channels-last --json out.json
    python benchmarks/model_throughput.py --models recce,xception,rfm,multiatt --device cpu --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

from recce.detectors import Detector, create_detector, detector_class, list_detectors
from recce.detectors.layers.xception import run_stage
from recce.detectors.recce import Recce

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2**30


class Backbone(torch.nn.Module):
    """A plain timm network with a two-way head: the reference point a detector's cost is read against."""

    def __init__(self, name: str):
        super().__init__()
        self.net = timm.create_model(name, pretrained=False, num_classes=2)
        self.input_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, images, labels, forward, cfg) -> dict[str, torch.Tensor]:
        return {"total": F.cross_entropy(forward(images).float(), labels)}


def model_label(key: str) -> str:
    if key == "looped":
        return "RECCE, official graph loop (baseline)"
    return key.removeprefix("backbone:") + " (plain backbone)" if key.startswith("backbone:") else key


def build_model(key: str) -> torch.nn.Module:
    if key == "looped":
        return Recce(looped_graph=True)
    if key.startswith("backbone:"):
        return Backbone(key.removeprefix("backbone:"))
    return create_detector(key)


def with_backbones(models: list[str]) -> list[str]:
    """Each detector followed by its plain backbone (once), so every detector is measured beside it."""
    ordered: list[str] = []
    for key in models:
        ordered.append(key)
        if key in list_detectors():
            ordered.append(f"backbone:{detector_class(key).backbone}")
    return list(dict.fromkeys(ordered))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="fp16 and bf16 run under autocast")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch")
    parser.add_argument("--infer-batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=299, help="input height and width")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours and Xception (never the loop)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (they hold any compilation)")
    parser.add_argument(
        "--baseline-steps", type=int, default=None, help="timed steps of the slow looped baseline (default --steps)"
    )
    parser.add_argument(
        "--baseline-train-steps",
        type=int,
        default=None,
        help="timed training steps of the looped baseline; 0 skips its training step (default --baseline-steps)",
    )
    parser.add_argument("--baseline-warmup", type=int, default=1)
    parser.add_argument(
        "--models",
        default="recce,looped,xception",
        help=f"comma-separated: detectors ({','.join(list_detectors())}), looped, backbone:<timm name>",
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (rewritten after each part)")
    parser.add_argument("--show", type=Path, default=None, help="print the table of a saved --json file and exit")
    args = parser.parse_args(argv)
    if args.show is not None:
        return args
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible to torch")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in list_detectors() and m != "looped" and not m.startswith("backbone:")]
    if unknown or not models:
        parser.error(f"--models: unknown {unknown}; choose from {','.join(list_detectors())}, looped, backbone:NAME")
    args.models = with_backbones(models)
    for name in ("batch_size", "infer_batch_size", "size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("warmup", "baseline_steps", "baseline_train_steps", "baseline_warmup"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if args.baseline_steps is None:
        args.baseline_steps = args.steps
    if args.baseline_train_steps is None:
        args.baseline_train_steps = args.baseline_steps
    return args


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object],
    steps: int,
    warmup: int,
    device: torch.device,
    after_warmup: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Seconds per call of `fn`, timed with CUDA events on the GPU and perf_counter on the CPU.

    The warm-up calls are timed apart: they hold cuDNN autotuning and torch.compile's compilation.
    """
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
    synchronize(device)
    warmup_s = time.perf_counter() - start
    if after_warmup is not None:
        after_warmup()
    if device.type == "cuda":
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
        marks[0].record()
        for mark in marks[1:]:
            fn()
            mark.record()
        torch.cuda.synchronize(device)
        per_call = [begin.elapsed_time(end) / 1000 for begin, end in zip(marks, marks[1:], strict=False)]
    else:
        per_call = []
        for _ in range(steps):
            begin = time.perf_counter()
            fn()
            per_call.append(time.perf_counter() - begin)
    per_call.sort()
    return {
        "warmup_s": warmup_s,
        "mean_s": sum(per_call) / steps,
        "median_s": per_call[steps // 2],
        "min_s": per_call[0],
        "steps": steps,
    }


def throughput(timing: dict[str, float], batch: int) -> dict[str, float]:
    """Images/s from the median step (robust to a shared machine's hiccups) and from the mean."""
    return {"images_per_s": batch / timing["median_s"], "images_per_s_mean": batch / timing["mean_s"]}


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def synthetic_batch(
    args: argparse.Namespace, batch: int, device: torch.device, channels: int = 3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and alternating real/fake labels, so every loss term is active."""
    images = torch.rand(batch, channels, args.size, args.size, device=device) * 2 - 1
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, torch.arange(batch, device=device) % 2


def compiled(fn: Callable, args: argparse.Namespace) -> Callable:
    return torch.compile(fn, mode=args.compile_mode) if args.compile else fn


def bench_training(
    model: torch.nn.Module, args: argparse.Namespace, device: torch.device, steps: int, warmup: int, compile_it: bool
) -> dict[str, float | None]:
    """RECCE's recipe: Adam(lr 2e-4, wd 1e-5), fused on CUDA; fp16 adds a GradScaler(init_scale=2**10)."""
    model.train()
    loss_config = model.Loss() if isinstance(model, Detector) else None
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0**10, enabled=args.dtype == "fp16")
    images, labels = synthetic_batch(args, args.batch_size, device, model.input_channels)

    def forward_loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with autocast(device, args.dtype):
            return model.training_step(images, labels, model, loss_config)["total"]

    forward_loss = compiled(forward_loss, args) if compile_it else forward_loss

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(forward_loss(images, labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    # Peak of the steady state (weights, Adam moments, one step's activations), not of compile-time buffers.
    timing = time_calls(step, steps, warmup, device, after_warmup=lambda: reset_peak(device))
    result = {**timing, **throughput(timing, args.batch_size), "peak_gib": peak_gib(device)}
    optimizer.zero_grad(set_to_none=True)
    return result


def bench_inference(
    model: torch.nn.Module, args: argparse.Namespace, device: torch.device, steps: int, warmup: int, compile_it: bool
) -> dict[str, float | None]:
    model.eval()
    images, _ = synthetic_batch(args, args.infer_batch_size, device, model.input_channels)
    forward = compiled(model, args) if compile_it else model

    def infer() -> None:
        with torch.inference_mode(), autocast(device, args.dtype):
            forward(images)

    timing = time_calls(infer, steps, warmup, device, after_warmup=lambda: reset_peak(device))
    return {**timing, **throughput(timing, args.infer_batch_size), "peak_gib": peak_gib(device)}


def graph_inputs(model: Recce, args: argparse.Namespace, device: torch.device) -> list[torch.Tensor]:
    """Block7 and decoder 2 / 4 maps at the training batch; the grid comes from one image through the entry flow."""
    with torch.no_grad():
        probe = run_stage(model.encoder, 0, torch.zeros(1, 3, args.size, args.size, device=device))
    _, channels, h, w = probe.shape
    shapes = [(channels, h, w), (256, 2 * h, 2 * w), (128, 4 * h, 4 * w)]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    return [
        torch.randn(args.batch_size, *shape, device=device).contiguous(memory_format=memory_format).requires_grad_()
        for shape in shapes
    ]


def bench_graph(
    model: Recce,
    args: argparse.Namespace,
    device: torch.device,
    steps: int,
    warmup: int,
    compile_it: bool,
    dtype: str,
) -> dict[str, float]:
    """Graph reasoning alone, forward + backward at the training batch, in training mode (dropout on)."""
    module = model.reasoning.train()
    inputs = graph_inputs(model, args, device)
    forward = compiled(module, args) if compile_it else module
    with torch.no_grad(), autocast(device, dtype):
        out_grad = torch.randn_like(module(*inputs))

    def forward_backward() -> None:
        with autocast(device, dtype):
            out = forward(*inputs)
        out.backward(out_grad)
        for tensor in inputs:
            tensor.grad = None
        module.zero_grad(set_to_none=True)

    timing = time_calls(forward_backward, steps, warmup, device)
    return {
        **timing,
        "ms_per_batch": 1000 * timing["median_s"],
        "ms_per_batch_mean": 1000 * timing["mean_s"],
        "dtype": dtype,
    }


def configuration(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        extra = {
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        }
    else:
        name = cpu_name()
        extra = {}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": name,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "infer_batch_size": args.infer_batch_size,
        "size": args.size,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "compile_mode": args.compile_mode,
        "steps": args.steps,
        "warmup": args.warmup,
        "baseline_steps": args.baseline_steps,
        "baseline_train_steps": args.baseline_train_steps,
        "models": args.models,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        **extra,
    }


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    return platform.processor() or platform.machine()


def write_json(path: Path, payload: dict) -> None:
    """Atomic: a kill mid-run leaves the previous complete file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def measure_model(
    key: str, model: torch.nn.Module, args: argparse.Namespace, device: torch.device
) -> Iterator[tuple[str, dict]]:
    """Yield (part, result) one measurement at a time, so each can be saved before the next starts."""
    label = model_label(key)
    looped = key == "looped"
    steps = args.baseline_steps if looped else args.steps
    warmup = args.baseline_warmup if looped else args.warmup
    train_steps = args.baseline_train_steps if looped else args.steps
    compile_it = args.compile and not looped  # compiling the 361-position loop would take many minutes
    if train_steps > 0:
        progress(f"{label}: training step ...")
        yield "train", bench_training(model, args, device, train_steps, warmup, compile_it)
    if steps <= 0:
        return
    progress(f"{label}: inference ...")
    yield "infer", bench_inference(model, args, device, steps, warmup, compile_it)
    if isinstance(model, Recce):
        for dtype in dict.fromkeys((args.dtype, "fp32")):
            progress(f"{label}: graph reasoning alone, {dtype} ...")
            yield f"graph_{dtype}", bench_graph(model, args, device, steps, warmup, compile_it, dtype)


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the official trainer's setting
    payload: dict[str, object] = {"config": configuration(args, device), "results": {}}
    print_config(payload["config"])
    for key in args.models:
        label = model_label(key)
        torch.manual_seed(0)  # same weights for ours and the baseline
        model = build_model(key).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        results: dict[str, object] = {"label": label, "compiled": args.compile and key != "looped"}
        payload["results"][key] = results
        for part, result in measure_model(key, model, args, device):
            results[part] = result
            progress(f"{label}: {part} {summary(result)}")
            if args.json is not None:
                write_json(args.json, payload)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(headline(payload["config"]))
    print_table(payload["config"], payload["results"])
    return payload


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def summary(result: dict) -> str:
    value = (
        f"{_cell(result['images_per_s'])} images/s"
        if "images_per_s" in result
        else f"{_cell(result['ms_per_batch'])} ms"
    )
    return f"{value} (warm-up {result['warmup_s']:.1f} s)"


def print_config(config: dict[str, object]) -> None:
    print("configuration:")
    for key, value in config.items():
        print(f"  {key}: {value}")


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    digits = 0 if abs(value) >= 1000 else 1 if abs(value) >= 10 else 2 if abs(value) >= 0.1 else 3
    return f"{value:,.{digits}f}"


def print_table(config: dict[str, object], results: dict[str, dict]) -> None:
    """Markdown table of medians; ours/baseline: speed ratio for timings (higher is better), plain ratio for memory."""
    batch, infer_batch, dtype = config["batch_size"], config["infer_batch_size"], config["dtype"]
    rows = [
        (f"training step, batch {batch}, {dtype} (images/s)", "train", "images_per_s", False),
        (f"training peak GPU memory, batch {batch} (GiB)", "train", "peak_gib", False),
        (f"inference, batch {infer_batch}, {dtype} (images/s)", "infer", "images_per_s", False),
        (f"inference peak GPU memory, batch {infer_batch} (GiB)", "infer", "peak_gib", False),
    ]
    rows += [
        (f"graph reasoning fwd+bwd, batch {batch}, {g} (ms)", f"graph_{g}", "ms_per_batch", True)
        for g in dict.fromkeys((dtype, "fp32"))
    ]
    with_ratio = "recce" in results and "looped" in results
    columns: list[str] = []
    for key in results:
        columns.append(key)
        if key == "looped" and with_ratio:
            columns.append("ratio")
    titles = {key: model_label(key) for key in results} | {"ratio": "ours/baseline"}
    lines = ["| what | " + " | ".join(titles[c] for c in columns) + " |", "| --- |" + " --- |" * len(columns)]
    for title, part, field, lower_is_better in rows:
        values = {key: results[key].get(part, {}).get(field) for key in results}
        if all(value is None for value in values.values()):
            continue
        ours, base = values.get("recce"), values.get("looped")
        if ours and base:
            values["ratio"] = base / ours if lower_is_better else ours / base
        cells = [f"{values[c]:,.2f}x" if c == "ratio" and values.get(c) else _cell(values.get(c)) for c in columns]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    print("\n".join(lines))


def show(path: Path) -> None:
    try:
        payload = json.loads(path.read_text())
        config, results = payload["config"], payload["results"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{path}: not a results file of this benchmark ({error})") from None
    print(f"{path}: {headline(config)}")
    print_table(config, results)


def headline(config: dict[str, object]) -> str:
    """The configuration in one line, to print beside every table."""
    return (
        f"{config['device_name']}, torch {config['torch']}, timm {config['timm']}, {config['dtype']}, "
        f"batch {config['batch_size']}/{config['infer_batch_size']} (train/infer), {config['size']}x{config['size']}, "
        f"channels_last={config['channels_last']}, compile={config['compile']}, threads {config['threads']}, "
        f"{config['date']}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.show is not None:
        show(args.show)
        return 0
    payload = run(args)
    if args.json is not None:
        write_json(args.json, payload)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
