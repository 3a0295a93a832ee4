"""RFM computes what the authors' code computes (golden vectors at 224 px), and its attention pass is well behaved."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from recce import checkpoints
from recce.detectors import create_detector, list_detectors
from recce.detectors.rfm import DEEPFAKEBENCH_PREPROCESS, RFM, RFMLoss, draw_blocks, erase_regions
from recce.engine.config import load_config
from recce.weights import CheckpointError

RTOL, ATOL = 1e-4, 1e-5  # the golden README's tolerances for logits and gradients; losses atol 1e-5
# Input gradients (the FAM, conv1's weight gradient) are non-smooth functions of the input (ReLU and max-pool
# switches): the same maths in float64 differs from the float32 golden by 0.3 % (FAM) and 0.7 % (conv1 gradient)
# in relative L2 norm, and a 1e-7 input perturbation moves the float64 FAM by 0.13 %. Elementwise 1e-4 holds only
# with the golden run's own CPU kernels (e.g. two threads here, not one), so these two are compared in L2 norm.
FAM_RTOL, CONV1_GRAD_RTOL = 1e-2, 2e-2

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = 64
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "rfm"


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(str(reference_dir / "baselines" / "rfm_official_golden.safetensors"))


@pytest.fixture(scope="module")
def authors_state(golden):
    """The golden weights as the authors save them: a bare Cadene-named state dict."""
    return {k.removeprefix("state."): v for k, v in golden.items() if k.startswith("state.")}


def _fresh(state) -> RFM:
    """A model with untouched BatchNorm statistics (a train-mode forward moves them)."""
    return RFM.from_reference(state, "golden").train()


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    return torch.allclose(actual, expected, rtol=RTOL, atol=ATOL)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def _cadene(model: RFM) -> dict[str, torch.Tensor]:
    return {k.removeprefix("encoder."): v.clone() for k, v in model.state_dict().items()}


class Replay:
    """Hands out recorded draws in order, checking each one's bounds as the reference would have drawn it."""

    def __init__(self, draws: torch.Tensor):
        self.values = draws.flatten().tolist()
        self.calls: list[tuple[int, int]] = []

    def randint(self, low: int, high: int) -> int:
        value = self.values.pop(0)
        self.calls.append((low, high))
        assert low <= value <= high
        return value


def test_importer_and_eval_logits_match_official(golden, authors_state):
    for state in (authors_state, {f"module.{k}": v for k, v in authors_state.items()}):
        model = RFM.from_reference(state, "golden")
        assert not model.training and model.config.num_classes == 2
        with torch.no_grad():
            logits = model(golden["input.x224"]).logits
        assert _close(logits, golden["official.eval.logits"])


def test_train_logits_and_flooded_loss_match_official(golden, authors_state):
    model = _fresh(authors_state)
    with torch.no_grad():
        output = model(golden["input.x224"])
    losses = model.loss(output, golden["input.x224"], golden["labels"], RFMLoss())
    assert _close(output.logits, golden["official.train.logits"])
    assert abs(losses["classification"].item() - golden["official.train.ce"].item()) < ATOL
    assert abs(losses["total"].item() - golden["official.train.flood"].item()) < ATOL


def test_attention_map_matches_official_in_eval_mode_and_restores_train_mode(golden, authors_state):
    model = _fresh(authors_state)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    logits, fam = model.attention_map(golden["input.x224"])
    assert fam.shape == (4, 1, 224, 224) and fam.dtype == torch.float32
    assert _relative_error(fam, golden["official.rfm.fam"]) < FAM_RTOL
    top = fam.flatten(1).argmax(1)
    assert torch.equal(torch.stack([top // 224, top % 224], 1), golden["official.rfm.points"][:, 0])
    assert _close(logits, golden["official.eval.logits"])  # the pass ran in eval mode
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert all(p.grad is None for p in model.parameters())


def test_erasing_replays_the_official_draws_exactly(golden):
    draws = golden["official.rfm.draws"]
    # The reference's order of draws: Python's random seeded with 7 gives exactly the stored ones.
    assert torch.equal(draw_blocks(4, 3, 120, random.Random(7)), draws)
    replay = Replay(draws)
    blocks = draw_blocks(4, 3, 120, replay)
    assert torch.equal(blocks, draws) and not replay.values
    assert replay.calls[:4] == [(1, 120), (1, 120), (1, draws[0, 0, 0].item()), (1, draws[0, 0, 1].item())]
    x, fam = golden["input.x224"], golden["official.rfm.fam"]
    erasure = erase_regions(x, fam, blocks, golden["official.rfm.noise_u01"])
    assert torch.equal(erasure.keep, golden["official.rfm.imgmask"].bool())
    assert torch.equal(erasure.points, golden["official.rfm.points"])
    assert torch.equal(erasure.boxes, golden["official.rfm.boxes"])
    assert torch.equal(erasure.images, golden["official.rfm.erased_input"])
    torch.manual_seed(8)  # the noise of the golden run: torch.rand_like right after this seed
    assert torch.equal(erase_regions(x, fam, blocks).images, golden["official.rfm.erased_input"])


def test_flooded_loss_and_gradients_after_backward_match_official(golden, authors_state):
    model = _fresh(authors_state)
    erased = golden["official.rfm.erased_input"]
    output = model(erased)
    losses = model.loss(output, erased, golden["labels"], RFMLoss())
    assert _close(output.logits, golden["official.rfm.train_logits"])
    assert abs(losses["classification"].item() - golden["official.rfm.ce"].item()) < ATOL
    assert abs(losses["total"].item() - golden["official.rfm.flood"].item()) < ATOL
    losses["total"].backward()
    assert _close(model.last_linear.weight.grad, golden["official.rfm.grad.last_linear.weight"])
    assert _relative_error(model.encoder.conv1.weight.grad, golden["official.rfm.grad.conv1.weight"]) < CONV1_GRAD_RTOL


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(1)
    return RFM()


def _small_batch(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(batch, 3, SMALL, SMALL) * 4 - 2, torch.arange(batch) % 2


def test_attention_pass_leaves_parameter_gradients_and_statistics_alone(small_model):
    model = small_model.train()
    images, _ = _small_batch()
    grads = {name: torch.randn_like(p) for name, p in model.named_parameters()}
    for name, p in model.named_parameters():
        p.grad = grads[name].clone()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    _, fam = model.attention_map(images)
    assert fam.shape == (2, 1, SMALL, SMALL) and (fam >= 0).all() and fam.amax() > 0
    assert all(torch.equal(p.grad, grads[name]) for name, p in model.named_parameters())
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert model.training
    model.zero_grad(set_to_none=True)


def test_attention_pass_and_training_step_run_under_cpu_bf16_autocast(small_model):
    model = small_model.train()
    images, labels = _small_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, fam = model.attention_map(images)
        losses = model.training_step(images, labels, model, RFMLoss(erase_max=30))
    assert fam.dtype == torch.float32 and torch.isfinite(fam).all() and fam.amax() > 0
    assert torch.isfinite(losses["total"]) and losses["total"].requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_training_step_classifies_the_erased_batch_in_train_mode(small_model):
    model = small_model.train()
    images, labels = _small_batch()
    cfg = RFMLoss(erase_max=30)
    seen = []

    def forward(x):
        assert model.training
        seen.append(x)
        return model(x)

    torch.manual_seed(5)
    expected = model.erase(images, cfg)  # before the step's train-mode forward moves the BatchNorm statistics
    torch.manual_seed(5)
    losses = model.training_step(images, labels, forward, cfg)
    assert len(seen) == 1 and torch.equal(seen[0], expected.images)
    assert not expected.keep.all() and torch.equal(
        seen[0][expected.keep.expand_as(images)], images[expected.keep.expand_as(images)]
    )
    erased_values = seen[0][~expected.keep.expand_as(images)]
    assert erased_values.min() >= -1 and erased_values.max() <= 1
    assert torch.allclose(losses["total"], (losses["classification"] - 0.04).abs() + 0.04)
    losses["total"].backward()
    assert model.last_linear.weight.grad is not None and torch.isfinite(model.encoder.conv1.weight.grad).all()
    model.zero_grad(set_to_none=True)


def _ddp_steps(rank: int, port: int, out: str) -> None:
    """Two RFM steps on one rank of a gloo group: attention pass on the raw module, the real pass through DDP."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    wrapped = torch.nn.parallel.DistributedDataParallel(RFM())
    torch.manual_seed(10 + rank)  # each rank its own images and draws
    images, labels = _small_batch()
    for _ in range(2):
        wrapped.module.training_step(images, labels, wrapped, RFMLoss(erase_max=20))["total"].backward()
    gathered = [torch.zeros(2, 2048) for _ in range(2)]
    dist.all_gather(gathered, wrapped.module.last_linear.weight.grad)
    if rank == 0:
        torch.save(gathered, out)
    dist.destroy_process_group()


def test_training_step_under_ddp_reduces_gradients_across_ranks(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_steps, args=(port, str(out)), nprocs=2)
    first, second = torch.load(out, weights_only=True)
    assert torch.equal(first, second) and first.abs().sum() > 0


def test_default_draws_follow_torch_global_generator(small_model):
    images, _ = _small_batch()
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(small_model.erase(images, RFMLoss(erase_max=30)))
    assert torch.equal(runs[0].images, runs[1].images) and torch.equal(runs[0].boxes, runs[1].boxes)
    assert not torch.equal(runs[0].boxes, runs[2].boxes)


def test_explain_gives_the_attention_map_under_no_grad(small_model):
    model = small_model.eval()
    images, _ = _small_batch(1)
    with torch.no_grad():
        output = model.explain(images)
        plain = model(images)
    assert set(output.maps) == set(RFM.map_kinds) == {"attention"}
    assert output.maps["attention"].shape == (1, 1, SMALL, SMALL)
    assert torch.allclose(output.logits, plain.logits)
    assert not model.training and plain.maps == {}


def test_point_stays_visible_when_the_offset_equals_the_block_and_the_walk_moves_on():
    fam = torch.arange(64, dtype=torch.float32).flip(0).reshape(1, 1, 8, 8)  # ranks: (0,0), (0,1), (0,2), ...
    blocks = torch.tensor([[[2, 2, 2, 2], [1, 1, 1, 1], [3, 1, 1, 1]]])  # sh == h: the block ends before the point
    erasure = erase_regions(torch.zeros(1, 3, 8, 8), fam, blocks, torch.full((1, 3, 8, 8), 0.75))
    # (0,0) clears rows/cols max(-2, 0):0 (nothing); (0,1) clears nothing either; (0,2) with h=3, sh=1: rows 0:2.
    assert erasure.points.tolist() == [[[0, 0], [0, 1], [0, 2]]]
    assert erasure.boxes.tolist() == [[[0, 0, 0, 0], [0, 0, 0, 1], [0, 2, 1, 2]]]
    expected = torch.ones(8, 8, dtype=torch.bool)
    expected[0:2, 1:2] = False
    assert torch.equal(erasure.keep[0, 0], expected)
    assert torch.equal(erasure.images[0, :, ~expected], torch.full((3, 2), 0.5))


def test_blocks_stop_when_nothing_is_left_to_erase():
    fam = torch.rand(1, 1, 8, 8)
    blocks = torch.tensor([[[16, 16, 8, 8], [5, 5, 1, 1]]])
    erasure = erase_regions(torch.zeros(1, 3, 8, 8), fam, blocks, torch.zeros(1, 3, 8, 8))
    assert not erasure.keep.any() and erasure.points[0, 1:].eq(-1).all() and erasure.boxes[0, 1:].eq(-1).all()


def test_published_weight_layouts_import_and_wrong_files_are_refused(tmp_path, small_model):
    cadene = _cadene(small_model)
    path = tmp_path / "xbase_xception_model_batch_30000"
    torch.save({f"module.{k}": v for k, v in cadene.items()}, path)
    authors = checkpoints.import_weights("rfm", path)
    assert authors.preprocess == RFM.default_preprocess
    bench = {f"backbone.{k}": v for k, v in cadene.items()}
    bench |= {
        "backbone.adjust_channel.0.weight": torch.zeros(512, 2048, 1, 1),
        "backbone.adjust_channel.1.bias": torch.zeros(512),
    }
    deepfakebench = RFM.from_reference(bench, "ckpt_best.pth")
    assert deepfakebench.preprocess == DEEPFAKEBENCH_PREPROCESS
    images, _ = _small_batch()
    with torch.no_grad():
        expected = small_model.eval()(images).logits
        assert torch.equal(authors(images).logits, expected) and torch.equal(deepfakebench(images).logits, expected)
    with pytest.raises(CheckpointError, match="num_classes=1"):
        RFM.from_reference(cadene, "x.pth", num_classes=1)
    broken = {k: v for k, v in cadene.items() if not k.startswith("block3.")}
    with pytest.raises(CheckpointError, match=r"x\.pth: weights do not fit a rfm detector: \d+ missing keys"):
        RFM.from_reference(broken, "x.pth")
    with pytest.raises(CheckpointError, match="no RFM classifier head"):
        RFM.from_reference({"fc.weight": torch.zeros(1, 2048)}, "recce.bin")


def test_registered_with_the_authors_preprocessing_and_configs_load():
    assert "rfm" in list_detectors()
    assert create_detector("rfm").preprocess.to_dict() == {
        "input_size": 224,
        "mean": (0.5, 0.5, 0.5),
        "std": (0.25, 0.25, 0.25),
        "resize": 256,
    }
    sizes = {}
    for name in ("native", "ffpp_c23", "wilddeepfake"):
        config = load_config(CONFIGS / f"{name}.yaml")
        assert config.model.name == "rfm" and config.preprocess().std == (0.25, 0.25, 0.25)
        assert config.optim.weight_decay == 0 and config.optim.gamma == 1 and config.train.batch_size == 16
        sizes[name] = (config.preprocess().input_size, config.loss_config().erase_max, config.model.pretrained)
    assert sizes == {
        "native": (224, 120, None),
        "ffpp_c23": (299, round(120 * 299 / 224), "weights/xception-43020ad28.pth"),
        "wilddeepfake": (224, 120, "weights/xception-43020ad28.pth"),
    }
