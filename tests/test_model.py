"""RECCE and Xception: shapes, batch size 1, dtypes, layouts, ablation variants, vectorised = looped graph."""

from __future__ import annotations

import itertools

import pytest
import torch

from recce.detectors.layers.graph_reasoning import AGGREGATIONS, GraphReasoning
from recce.detectors.recce import Recce, RecceOutput
from recce.detectors.xception import Xception
from recce.losses import RecceLoss

SMALL = 64


def _batch(size: int = SMALL, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(batch, 3, size, size) * 2 - 1
    labels = torch.arange(batch) % 2
    return images, labels


@pytest.mark.parametrize("size, grid", [(299, 10), (256, 8), (224, 7)])
def test_shapes_at_paper_sizes_with_batch_one(size, grid):
    model = Recce().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size) * 2 - 1)
    assert out.logits.shape == (1, 1)
    assert out.reconstruction.shape == (1, 3, size, size)
    assert out.reconstruction.abs().max() <= 1
    assert [s.shape for s in out.similarities] == [(1, 1)] * 3
    assert out.attention.shape[-2:] == (2 * grid - 1 if size == 299 else 2 * grid,) * 2


def test_batch_of_one_trains():
    model = Recce(num_classes=1).train()
    images, labels = _batch(batch=1)
    losses = RecceLoss()(model(images), images, labels)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    assert model.fc.weight.grad is not None and torch.isfinite(model.fc.weight.grad).all()


def test_no_state_kept_between_calls():
    model = Recce().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        first = model(_batch()[0])
        model(_batch()[0])
    assert set(vars(model)) == set(vars(Recce().eval()))  # no activations stored as attributes
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(first, RecceOutput)


@pytest.mark.parametrize("ratio_pair", [(2, 4)])
def test_vectorised_graph_reasoning_equals_per_position_loop(ratio_pair):
    torch.manual_seed(3)
    fast = GraphReasoning(drop_rate=0.0).eval()
    slow = GraphReasoning(drop_rate=0.0, looped=True).eval()
    slow.load_state_dict(fast.state_dict())
    h, w = 5, 7  # non-square grid checks the row-major node order
    e = torch.randn(3, 728, h, w, requires_grad=True)
    d2 = torch.randn(3, 256, 2 * h, 2 * w, requires_grad=True)
    d4 = torch.randn(3, 128, 4 * h, 4 * w, requires_grad=True)
    out_fast = fast(e, d2, d4)
    grads_fast = torch.autograd.grad(out_fast.square().sum(), (e, d2, d4, *fast.parameters()))
    out_slow = slow(e, d2, d4)
    grads_slow = torch.autograd.grad(out_slow.square().sum(), (e, d2, d4, *slow.parameters()))
    assert out_fast.shape == (3, 728, h, w)
    torch.testing.assert_close(out_fast, out_slow, rtol=1e-5, atol=1e-6)
    for gf, gs in zip(grads_fast, grads_slow, strict=True):
        torch.testing.assert_close(gf, gs, rtol=1e-4, atol=1e-6)


def test_looped_model_is_the_same_function():
    fast = Recce(drop_rate=0.0).eval()
    slow = Recce(drop_rate=0.0, looped_graph=True).eval()
    slow.load_state_dict(fast.state_dict())
    images, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(fast(images).logits, slow(images).logits, rtol=1e-5, atol=1e-5)


def test_graph_edge_weights_follow_relu_then_softmax():
    module = GraphReasoning(drop_rate=0.0).eval()
    with torch.no_grad():
        module.reweight_ab[0].weight.fill_(-1.0)  # every score <= 0 for positive inputs: uniform weights
    nodes = torch.rand(1, 4, 256)
    children = torch.rand(1, 4, 4, 256)
    out = module._vectorised(nodes, children, module.reweight_ab[0].weight)
    torch.testing.assert_close(out, children.mean(dim=2))


VARIANTS = list(itertools.product(AGGREGATIONS, (True, False)))


@pytest.mark.parametrize("aggregation, multi_scale", VARIANTS)
def test_ablation_variants_train(aggregation, multi_scale):
    model = Recce(aggregation=aggregation, multi_scale=multi_scale).train()
    images, labels = _batch()
    losses = RecceLoss()(model(images), images, labels)
    losses["total"].backward()
    reasoning_grads = [p.grad for p in model.reasoning.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in reasoning_grads)
    assert any(g.abs().sum() > 0 for g in reasoning_grads)


def test_variants_differ_in_structure():
    params = {
        v: sum(p.numel() for p in Recce(aggregation=v[0], multi_scale=v[1]).reasoning.parameters()) for v in VARIANTS
    }
    assert params[("graph", True)] == 1_944_128  # the official module's parameter count
    assert params[("graph", False)] < params[("graph", True)]
    assert params[("sum", True)] < params[("concat", True)]


@pytest.mark.parametrize("reconstruct, lambda_metric", [("all", 0.1), ("real", 0.0)])
def test_loss_ablations_train(reconstruct, lambda_metric):
    model = Recce().train()
    images, labels = _batch()
    loss = RecceLoss(reconstruct=reconstruct, lambda_metric=lambda_metric)
    losses = loss(model(images), images, labels)
    losses["total"].backward()
    assert torch.isfinite(losses["total"])
    expected = losses["flooded"] + 0.1 * losses["reconstruction"] + lambda_metric * losses["metric"]
    torch.testing.assert_close(losses["total"], expected)


def test_parameter_count_matches_official_forward_parameters():
    assert sum(p.numel() for p in Recce().parameters()) == 23_781_509


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_channels_last(dtype):
    model = Recce().eval()
    images, _ = _batch()
    with torch.no_grad():
        reference = model(images).logits
        model_cl = model.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=dtype):
            out = model_cl(images.contiguous(memory_format=torch.channels_last))
    assert torch.isfinite(out.logits.float()).all()
    assert out.logits.shape == reference.shape
    torch.testing.assert_close(out.logits.float(), reference, rtol=0.1, atol=0.1)


def test_two_class_head_and_xception_baseline():
    images, labels = _batch()
    for model in (Recce(num_classes=2).train(), Xception(num_classes=2).train()):
        out = model(images)
        assert out.logits.shape == (2, 2)
        losses = model.loss(out, images, labels, model.Loss())
        losses["total"].backward()
        assert torch.isfinite(losses["total"])
    baseline = Xception().train()(images)
    assert baseline.maps == {} and baseline.aux == {}


def test_invalid_options_are_rejected():
    with pytest.raises(ValueError, match="num_classes"):
        Recce(num_classes=3)
    with pytest.raises(ValueError, match="aggregation"):
        Recce(aggregation="mean")
