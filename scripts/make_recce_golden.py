"""Make the RECCE golden vectors the parity tests read, from a checkout of the official RECCE code.

    git clone https://github.com/VISION-SJTU/RECCE /tmp/RECCE
    python scripts/make_recce_golden.py /tmp/RECCE --out golden/
    RECCE_REFERENCE_DIR=golden/ python -m pytest tests/test_parity.py

The official `model/network/Recce.py` builds the network and the official loss code (`loss/__init__.py`:
BCE-with-logits; `trainer/utils.py`: the reconstruction and metric-learning losses) scores it; timm provides the
Xception it is built on, created without downloading anything. The model, seeded, is trained for a few Adam steps
on a seeded random input (so BatchNorm statistics and outputs are not trivial), its floating weights are rounded
to float16 (stored exactly; the outputs are computed from the rounded weights), and then:

- `state_dict.<name>`: the official `state_dict()` (floating tensors float16, exact), as a checkpoint stores it
- `input` (B x 3 x S x S, in [-1, 1]) and `labels` ([0, 1, 0, 1, ...], 0 = real)
- `eval.logits`, `eval.recons`, `eval.contra`: eval-mode logits, reconstruction and the three similarity matrices
- `train.logits`, `train.recons`, `train.contra`: the same in train mode with every Dropout at p = 0 and the 1e-6
  input noise off
- `train.loss.{classification, flooded, reconstruction, metric, total}`: the official training step's terms,
  total = |BCE - 0.04| + 0.04 + 0.1 * reconstruction + 0.1 * metric

are written to OUT/recce_official_golden.safetensors (with the run's settings in its metadata), together with
OUT/recce_official_state_dict_keys.txt. The official code and timm must be importable (timm 0.3.4, the version
the authors name, calls the network `xception`; later versions `legacy_xception`; either works).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import ModuleType

GOLDEN_NAME = "recce_official_golden.safetensors"
KEYS_NAME = "recce_official_state_dict_keys.txt"
LAMBDA_RECONSTRUCTION = 0.1  # the official config's lambda_1
LAMBDA_METRIC = 0.1  # the official config's lambda_2
FLOODING = 0.04  # the official trainer's flooding level
DROP_RATE = 0.2  # the official default
LEARNING_RATE = 2e-4  # the official config's Adam learning rate
LOSS_TERMS = ("classification", "flooded", "reconstruction", "metric", "total")
OFFICIAL_FILES = ("model/network/Recce.py", "loss/__init__.py", "trainer/utils.py")


class UsageError(Exception):
    """A bad argument or an unusable checkout: one line, exit status 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Make the RECCE golden vectors from a checkout of github.com/VISION-SJTU/RECCE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("checkout", type=Path, help="folder of a checkout of the official RECCE code")
    parser.add_argument("--out", type=Path, default=Path("reference"), help="folder to write the golden file into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the input and the training steps")
    parser.add_argument("--size", type=int, default=299, help="input size (the tests' tolerances hold at 299)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (even, at least 2: real and fake alike)")
    parser.add_argument("--steps", type=int, default=3, help="Adam steps on the input before the vectors are taken")
    parser.add_argument("--force", action="store_true", help="replace an existing golden file")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be wrong before the official code is touched, each as one line."""
    if not args.checkout.is_dir():
        raise UsageError(f"{args.checkout}: no such folder (give the path of a RECCE checkout)")
    missing = [name for name in OFFICIAL_FILES if not (args.checkout / name).is_file()]
    if missing:
        raise UsageError(
            f"{args.checkout}: not a checkout of the official RECCE code ({', '.join(missing)} missing); "
            "clone github.com/VISION-SJTU/RECCE"
        )
    if args.batch < 2 or args.batch % 2:
        raise UsageError(f"--batch must be even and at least 2 (real and fake images alike), got {args.batch}")
    if not 64 <= args.size <= 1024:
        raise UsageError(f"--size must be in 64..1024 (the network downsamples 32 times), got {args.size}")
    if args.steps < 0:
        raise UsageError(f"--steps must be 0 or more, got {args.steps}")
    target = args.out / GOLDEN_NAME
    if target.exists() and not args.force:
        raise UsageError(f"{target}: already exists (pass --force to replace it)")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"{args.out}: exists and is not a folder")


def _module_from_file(name: str, path: Path) -> ModuleType:
    """Import one file of the checkout under a private name (its package __init__ pulls in training-only deps)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_official(checkout: Path) -> tuple[ModuleType, ModuleType, ModuleType]:
    """The official network module, loss module and trainer utilities (losses), imported from the checkout."""
    try:
        import timm
    except ImportError:
        raise UsageError("the official RECCE code needs timm: pip install timm") from None
    sys.path.insert(0, str(checkout.resolve()))
    try:
        network = importlib.import_module("model.network.Recce")
        losses = _module_from_file("recce_official_loss", checkout / "loss" / "__init__.py")
        utils = _module_from_file("recce_official_trainer_utils", checkout / "trainer" / "utils.py")
    except ImportError as error:
        raise UsageError(f"{checkout}: the official code does not import ({error})") from None
    # The official network downloads ImageNet weights when built; golden vectors need none, so build it bare.
    name = "legacy_xception" if "legacy_xception" in timm.list_models() else "xception"
    network.encoder_params["xception"]["init_op"] = partial(timm.create_model, name, pretrained=False)
    return network, losses, utils


def _git_commit(checkout: Path) -> str:
    try:
        run = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return run.stdout.strip() if run.returncode == 0 else "unknown"


def training_terms(model, losses: ModuleType, utils: ModuleType, x, labels) -> dict:
    """One official training step's logits and loss terms (the trainer's formula, on the official loss functions)."""
    logits = model(x)
    classification = losses.LOSSES["binary_ce"](logits.squeeze(-1), labels.float())
    flooded = (classification - FLOODING).abs() + FLOODING
    reconstruction = utils.exp_recons_loss(model.loss_inputs["recons"], (x, labels))
    metric = utils.MLLoss()(model.loss_inputs["contra"], labels)
    total = flooded + LAMBDA_RECONSTRUCTION * reconstruction + LAMBDA_METRIC * metric
    return dict(
        logits=logits, classification=classification, flooded=flooded, reconstruction=reconstruction,
        metric=metric, total=total,
    )  # fmt: skip


def outputs(model, logits) -> dict:
    """Logits, reconstruction and similarity matrices of the forward pass that gave `logits`."""
    import torch

    return {
        "logits": logits.detach(),
        "recons": model.loss_inputs["recons"][0].detach(),
        "contra": torch.stack([c.detach() for c in model.loss_inputs["contra"]]),
    }


def make_golden(args: argparse.Namespace) -> Path:
    import safetensors.torch
    import torch

    network, losses, utils = load_official(args.checkout)
    torch.manual_seed(args.seed)
    model = network.Recce(num_classes=1, drop_rate=DROP_RATE)
    generator = torch.Generator().manual_seed(args.seed + 1)
    x = torch.rand(args.batch, 3, args.size, args.size, generator=generator) * 2 - 1
    labels = torch.arange(args.batch) % 2  # [0, 1, 0, 1, ...]

    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(args.steps):
        optimizer.zero_grad()
        training_terms(model, losses, utils, x, labels)["total"].backward()
        optimizer.step()

    # Round every floating tensor to float16 so the stored weights are exactly the ones the outputs come from.
    # (Copies: the train-mode pass below moves the model's buffers in place.)
    state = {
        k: v.detach().half() if v.is_floating_point() else v.detach().clone() for k, v in model.state_dict().items()
    }
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})

    model.eval()
    with torch.no_grad():
        golden = {f"eval.{k}": v for k, v in outputs(model, model(x)).items()}

    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.add_white_noise = lambda tensor, *args, **kwargs: tensor  # the 1e-6 training noise, off
    terms = training_terms(model, losses, utils, x, labels)
    golden.update({f"train.{k}": v for k, v in outputs(model, terms["logits"]).items()})
    golden.update({f"train.loss.{k}": terms[k].detach().reshape(1).float() for k in LOSS_TERMS})
    golden.update({f"state_dict.{k}": v.contiguous() for k, v in state.items()})
    golden.update({"input": x, "labels": labels})

    metadata = {
        "seed": str(args.seed),
        "size": str(args.size),
        "batch": str(args.batch),
        "num_classes": "1",
        "lambda_reconstruction": str(LAMBDA_RECONSTRUCTION),
        "lambda_metric": str(LAMBDA_METRIC),
        "flooding_b": str(FLOODING),
        "drop_rate": str(DROP_RATE),
        "warmup_adam_steps": str(args.steps),
        "official_commit": _git_commit(args.checkout),
        "torch": torch.__version__,
        "timm": importlib.import_module("timm").__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / GOLDEN_NAME
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    safetensors.torch.save_file(golden, str(tmp), metadata=metadata)
    os.replace(tmp, target)
    lines = ["# official RECCE state_dict: key, dtype as stored in the golden file, shape"]
    lines += [f"{k}\t{str(v.dtype).removeprefix('torch.')}\t{list(v.shape)}" for k, v in sorted(state.items())]
    (args.out / KEYS_NAME).write_text("\n".join(lines) + "\n")
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
        target = make_golden(args)
    except UsageError as error:
        print(f"make_recce_golden: {error}", file=sys.stderr)
        return 2
    print(f"wrote {target}; check parity with: RECCE_REFERENCE_DIR={args.out} python -m pytest tests/test_parity.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
