"""RECCE on a CUDA GPU: mixed-precision channels_last training at 299, and the same function as the loop and the CPU."""

from __future__ import annotations

import pytest
import torch

from recce.detectors.layers.graph_reasoning import GraphReasoning
from recce.detectors.recce import Recce
from recce.losses import RecceLoss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU, and torch sees none")

CUDA = torch.device("cuda")


@pytest.fixture
def exact_float32():
    """TF32 off, so float32 on the GPU is compared at float32 precision."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)).item()


def _images(batch: int, size: int = 299, channels_last: bool = False) -> torch.Tensor:
    images = torch.rand(batch, 3, size, size, device=CUDA) * 2 - 1
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_channels_last_at_299(dtype):
    model = Recce().to(CUDA, memory_format=torch.channels_last)
    images = _images(4, channels_last=True)
    labels = torch.arange(4, device=CUDA) % 2
    with torch.no_grad():
        reference = model.eval()(images).logits
        with torch.autocast("cuda", dtype=dtype):
            mixed = model(images).logits
    torch.testing.assert_close(mixed.float(), reference, rtol=0.1, atol=0.1)

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5, fused=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10, enabled=dtype == torch.float16)
    before = model.fc.weight.detach().clone()
    with torch.autocast("cuda", dtype=dtype):
        output = model(images)
        losses = RecceLoss()(output, images, labels)
    scaler.scale(losses["total"]).backward()
    scaler.unscale_(optimizer)
    assert output.logits.shape == (4, 1)
    assert output.reconstruction.shape == (4, 3, 299, 299)
    assert torch.isfinite(losses["total"])
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.reasoning.reweight_ac[0].weight.grad.abs().sum() > 0
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(model.fc.weight, before)


def test_vectorised_graph_reasoning_equals_loop_on_cuda(exact_float32):
    torch.manual_seed(3)
    fast = GraphReasoning(drop_rate=0.0).to(CUDA).eval()
    slow = GraphReasoning(drop_rate=0.0, looped=True).to(CUDA).eval()
    slow.load_state_dict(fast.state_dict())
    inputs = [
        torch.randn(2, channels, side, side, device=CUDA, requires_grad=True)
        for channels, side in ((728, 19), (256, 38), (128, 76))
    ]
    out_fast = fast(*inputs)
    grads_fast = torch.autograd.grad(out_fast.square().sum(), (*inputs, *fast.parameters()))
    out_slow = slow(*inputs)
    grads_slow = torch.autograd.grad(out_slow.square().sum(), (*inputs, *slow.parameters()))
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-5, atol=1e-5)
    for gf, gs in zip(grads_fast, grads_slow, strict=True):
        assert _relative_error(gf, gs) < 1e-5


def test_cuda_model_equals_looped_model_and_cpu(exact_float32):
    fast = Recce(drop_rate=0.0).eval()
    slow = Recce(drop_rate=0.0, looped_graph=True).eval()
    slow.load_state_dict(fast.state_dict())
    images = _images(2)
    with torch.no_grad():
        on_cpu = fast(images.cpu())
        fast, slow = fast.to(CUDA), slow.to(CUDA)
        out_fast, out_slow = fast(images), slow(images)
    torch.testing.assert_close(out_fast.logits, out_slow.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_fast.reconstruction, out_slow.reconstruction, rtol=1e-5, atol=1e-5)
    assert _relative_error(out_fast.logits.cpu(), on_cpu.logits) < 1e-4
    assert _relative_error(out_fast.reconstruction.cpu(), on_cpu.reconstruction) < 1e-4
    for gpu, cpu in zip(out_fast.similarities, on_cpu.similarities, strict=True):
        assert _relative_error(gpu.cpu(), cpu) < 1e-4
