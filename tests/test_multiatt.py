"""MultiAtt: parity with the authors' code (golden vectors at 128 px), its state, AGDA, the two stages, importers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from recce import checkpoints
from recce.cli import main
from recce.detectors import create_detector
from recce.detectors.layers.efficientnet import FixedPadConv2d, build_b4, run_b4
from recce.detectors.multiatt import MultiAtt, MultiAttLoss, RegionalIndependence, weighted_mean
from recce.engine.config import ModelSection, TrainConfig, load_config
from recce.engine.train import build_model
from recce.weights import CheckpointError

GOLDEN = "baselines/multiatt_official_golden_128.safetensors"
WEIGHTS = "baselines/multiatt_official_weights.safetensors"
NO_DROPOUT = {"attention_dropout": 0.0, "final_dropout": 0.0, "drop_connect": 0.0}  # as the golden's train pass
GRADIENTS = {  # golden (official) name -> ours
    "attentions.conv2.weight": "attentions.conv2.weight",
    "ensemble_classifier_fc.2.weight": "ensemble_classifier_fc.2.weight",
    "net._conv_stem.weight": "net.conv_stem.weight",
    "project_final.weight": "project_final.weight",
    "projection_local.0.weight": "projection_local.0.weight",
    "texture_enhance.conv_extract.weight": "texture_enhance.conv_extract.weight",
}


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual.float(), expected.float(), rtol=1e-4, atol=atol)


@pytest.fixture(scope="module")
def golden(reference_dir):
    return load_file(str(reference_dir / GOLDEN))


@pytest.fixture(scope="module")
def official_state(reference_dir):
    """The authors' state dict as their `ckpt_*.pth` holds it (official key names)."""
    return {k.removeprefix("state_dict."): v for k, v in load_file(str(reference_dir / WEIGHTS)).items()}


def imported(state, **options) -> MultiAtt:
    return checkpoints.import_weights("multiatt", dict(state), **NO_DROPOUT, **options)


class Replay:
    """AGDA draws recorded by the reference, in its order: map index, threshold, zoom, noise."""

    def __init__(self, golden):
        self.golden = golden
        self.weights = None

    def index(self, weights):
        self.weights = weights
        return self.golden["train.agda.index"]

    def threshold(self, low, high):
        return self.golden["train.agda.threshold"].item()

    def zoom(self, low, high):
        return self.golden["train.agda.zoom"].item()

    def noise(self, like):
        assert like.shape == self.golden["train.agda.noise"].shape
        return self.golden["train.agda.noise"]


def test_eval_matches_the_authors_code(golden, official_state, one_torch_thread):
    model = imported(official_state)
    assert sum(p.numel() for p in model.parameters()) == 18_826_068 - 2 * 1792 - 2  # less B4's unused classifier
    with torch.no_grad():
        out = model.features(golden["input.x"])
        output = model(golden["input.x"])
    for tap in ("b2", "b5", "final"):
        # Deep in the backbone, float32 rounding alone (it moves with the thread count: 3.4e-5 on one thread,
        # 2.7e-5 on two) exceeds 1e-5 on near-zero elements of b5 (largest 8.8): atol is scaled to the map here.
        expected = golden[f"eval.layers.{tap}"]
        close(out[tap], expected, atol=1e-5 * max(1.0, expected.abs().max().item()))
    close(out["attention"], golden["eval.attention_maps"])
    close(out["textures"][0], golden["eval.texture_feature_maps_b0"])  # the M texture maps of the first image
    close(out["local"], golden["eval.texture_feature_maps_d"])
    close(out["matrix"].flatten(1), golden["eval.feature_matrix_flat"])
    close(out["pooled"], golden["eval.final_pooled"])
    close(out["ensemble"], golden["eval.ensemble_in"])
    close(output.logits, golden["eval.logits"])
    close(torch.softmax(output.logits, 1)[:, 1], golden["eval.prob_fake"])
    close(output.maps["attention"], golden["eval.attention_maps"].mean(1, keepdim=True))


def test_training_step_matches_the_authors_code(golden, official_state, one_torch_thread):
    """Both passes with the recorded AGDA draws: x_aug, every loss term, the centres, six gradients."""
    model = imported(official_state).train()
    inputs, centres = [], []

    def forward(x):
        inputs.append(x)
        centres.append(model.auxiliary_loss.feature_centers.clone())
        return model(x)

    draws = Replay(golden)
    terms = model.training_step(golden["input.x"], golden["input.y"], forward, MultiAttLoss(), draws=draws)
    terms["total"].backward()

    close(draws.weights, torch.sqrt(golden["train.agda.attention_maps_in"].sum((2, 3)) + 1))
    assert len(inputs) == 2
    close(inputs[1], golden["train.agda.x_aug"])
    for ours, theirs in (
        ("classification", "ensemble_loss"),
        ("regional", "aux_loss"),
        ("classification_agda", "AGDA_ensemble_loss"),
        ("regional_agda", "AGDA_aux_loss"),
        ("match", "match_loss"),
        ("total", "total"),
    ):
        torch.testing.assert_close(terms[ours], golden[f"loss.{theirs}"], rtol=0, atol=1e-5)
    torch.testing.assert_close(terms["intra"], golden["derived.pass1.aux.intra"], rtol=0, atol=1e-5)
    torch.testing.assert_close(terms["inter"], golden["derived.pass1.aux.inter"], rtol=0, atol=1e-5)
    close(centres[0], golden["train.pass1.aux.centers_before"])
    close(centres[1], golden["train.pass1.aux.centers_after"])
    close(centres[1], golden["train.pass2.aux.centers_before"])
    close(model.auxiliary_loss.feature_centers, golden["train.pass2.aux.centers_after"])
    close(model.auxiliary_loss.feature_centers, golden["after_train.buffers.auxiliary_loss.feature_centers"])
    parameters = dict(model.named_parameters())
    for theirs, ours in GRADIENTS.items():
        close(parameters[ours].grad, golden[f"grad_total.{theirs}"])

    # The intermediates of each pass (train-mode BN uses batch statistics, so a repeat pass gives the same values).
    with torch.no_grad():
        for number, x in enumerate(inputs, 1):
            out = model.features(x)
            prefix = f"train.pass{number}."
            close(out["ensemble"], golden[prefix + "ensemble_in"])
            close(out["local"], golden[prefix + "texture_feature_maps_d_raw"])
            close(out["regional"], golden[prefix + "feature_matrix_d"])
            if number == 1:
                close(out["attention"], golden[prefix + "attention_maps"])
                close(out["matrix"], golden[prefix + "feature_matrix"])
                close(out["logits"], golden[prefix + "ensemble_logit"])


def test_padding_follows_the_authors_efficientnet(one_torch_thread):
    """Stride-2 convs pad (0, 1) / (1, 2) whatever the input: 380 px gives 95 / 23 / 11 where stock B4 gives 24 / 12."""
    net = build_b4().eval()
    pads = {name: m.pad for name, m in net.named_modules() if isinstance(m, FixedPadConv2d)}
    assert pads == {
        "conv_stem": (0, 1, 0, 1),
        "blocks.1.0.conv_dw": (0, 1, 0, 1),
        "blocks.2.0.conv_dw": (1, 2, 1, 2),
        "blocks.3.0.conv_dw": (0, 1, 0, 1),
        "blocks.5.0.conv_dw": (1, 2, 1, 2),
    }
    with torch.no_grad():
        taps = run_b4(net, torch.zeros(1, 3, 380, 380))
    assert [taps[k].shape[-1] for k in ("b2", "b5", "final")] == [95, 23, 11]
    batchnorms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in batchnorms)
    rates = [
        block.drop_path.drop_prob for stage in net.blocks for block in stage if hasattr(block.drop_path, "drop_prob")
    ]
    assert rates == pytest.approx([0.2 * i / 32 for i in range(1, 32)])


def test_attention_dropout_is_one_mask_per_sample_and_map():
    """Each (sample, map) is kept (x 1 / 0.75) or dropped in both the texture matrix and the global weighting."""
    dropping = MultiAtt(attention_dropout=0.25, final_dropout=0.0, drop_connect=0.0).train()
    plain = MultiAtt(**NO_DROPOUT).train()
    plain.load_state_dict(dropping.state_dict())
    x = torch.rand(8, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        dropped, undropped = dropping.features(x), plain.features(x)
    keep = dropped["matrix"].norm(dim=-1) / undropped["matrix"].norm(dim=-1)
    assert ((keep - 0).abs() < 1e-5).logical_or((keep - 1 / 0.75).abs() < 1e-5).all()
    assert 0 < (keep == 0).sum() < keep.numel()
    weight = (undropped["attention"] * keep[..., None, None]).sum(1, keepdim=True)
    close(dropped["pooled"], weighted_mean(undropped["final"], weight))
    close(dropped["attention"], undropped["attention"])  # the maps themselves (and the texture branch) are undropped
    close(dropped["regional"], undropped["regional"])


def test_default_agda_draws_come_from_torch_rng():
    """Same seed, same augmentation (the trainer saves torch's RNG, so a resumed run is exact)."""
    model = MultiAtt()
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    attention = torch.rand(3, 4, 4, 4) * 2
    cfg = MultiAttLoss()
    results = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        results.append(model.augment(images, attention, cfg))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    assert torch.equal(results[0][1], results[1][1])
    assert not torch.equal(results[0][0], results[2][0])
    augmented, index = results[0]
    assert augmented.shape == images.shape and index.shape == (3,) and int(index.max()) < 4
    assert not torch.equal(augmented, images)


def test_centres_are_saved_and_move_only_in_training(tmp_path):
    model = MultiAtt(**NO_DROPOUT)
    features = torch.nn.functional.normalize(torch.randn(4, 4, 32), dim=-1)
    labels = torch.tensor([0, 1, 0, 1])
    cfg = MultiAttLoss()
    model.eval()
    model.auxiliary_loss(features, labels, cfg)
    assert model.auxiliary_loss.feature_centers.abs().max() == 0
    model.train()
    intra, inter = model.auxiliary_loss(features, labels, cfg)
    expected = 0.05 * (features * (labels == 0).view(-1, 1, 1)).mean(0)
    torch.testing.assert_close(model.auxiliary_loss.feature_centers, expected)
    assert intra > 0 and inter > 0
    model.epoch_end(1)
    model.epoch_end(2)
    assert model.auxiliary_loss.alpha.item() == pytest.approx(0.05 * 0.9**2)
    loaded = checkpoints.load(checkpoints.save(model, tmp_path / "m.safetensors"))
    torch.testing.assert_close(loaded.auxiliary_loss.feature_centers, model.auxiliary_loss.feature_centers)
    assert loaded.auxiliary_loss.alpha.item() == pytest.approx(0.05 * 0.9**2)


PEER = """
import sys, torch, torch.distributed as dist
dist.init_process_group("gloo", init_method=sys.argv[1], rank=1, world_size=2)
dist.all_reduce(torch.full((2, 3), 1.0))  # the moved centres the peer's module would contribute
dist.destroy_process_group()
"""


def test_centres_are_averaged_across_processes():
    """Under torch.distributed the moved centres are averaged over the processes (the peer only needs torch)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    peer = subprocess.Popen([sys.executable, "-c", PEER, address])
    try:
        torch.distributed.init_process_group("gloo", init_method=address, rank=0, world_size=2)
        module = RegionalIndependence(2, 3, 0.5).train()
        module(torch.ones(1, 2, 3), torch.tensor([0]), MultiAttLoss())  # moves its centres to 0.5
        torch.testing.assert_close(module.feature_centers, torch.full((2, 3), 0.75))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        assert peer.wait(timeout=120) == 0


def test_stage_one_initialises_stage_two_through_init_from(tmp_path):
    """Backbone key names are the same in both stages, so `model.init_from` carries every backbone tensor."""
    stage1 = MultiAtt(stage="backbone")
    assert not hasattr(stage1, "attentions")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    terms = stage1.train().training_step(x, torch.tensor([0, 1]), stage1, MultiAttLoss())
    assert set(terms) == {"total", "classification"} and torch.isfinite(terms["total"])
    with torch.no_grad():
        output = stage1.eval()(x)
    bias = stage1.net.classifier.bias
    gap = output.maps["attention"].mean((1, 2, 3)) + bias[1] - bias[0]  # class activation map: mean = logit gap
    close(gap, output.logits[:, 1] - output.logits[:, 0])
    path = checkpoints.save(stage1, tmp_path / "best.safetensors")
    config = TrainConfig(model=ModelSection(name="multiatt", init_from=str(path)))
    stage2 = build_model(config)
    assert stage2.config.stage == "full"
    own = stage2.state_dict()
    for key, value in stage1.state_dict().items():
        if key.startswith("net.classifier."):
            assert key not in own  # B4's own classifier is left out of the full model (unused there)
        else:
            assert torch.equal(own[key], value), key
    assert own["auxiliary_loss.feature_centers"].abs().max() == 0


def test_full_training_step_runs_at_small_size():
    model = MultiAtt().train()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    terms = model.training_step(x, torch.tensor([0, 1]), model, MultiAttLoss())
    terms["total"].backward()
    expected = {
        "total",
        "classification",
        "regional",
        "intra",
        "inter",
        "classification_agda",
        "regional_agda",
        "match",
    }
    assert set(terms) == expected and all(torch.isfinite(v) for v in terms.values())
    assert model.net.conv_stem.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="multiatt needs inputs of at least 32 px, got 24 x 24"):
        model(torch.zeros(1, 3, 24, 24))
    no_agda = model.training_step(x, torch.tensor([0, 1]), model, MultiAttLoss(agda_weight=0.0))
    assert set(no_agda) == {"total", "classification", "regional", "intra", "inter"}


def test_convert_an_authors_checkpoint_file(tmp_path, official_state, golden, capsys):
    """`recce convert --detector multiatt ckpt_N.pth`: the authors' dict (logs, state_dict, optimiser state)."""
    source = tmp_path / "ckpt_49.pth"
    optimizer = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    torch.save({"logs": {"epoch": 49}, "state_dict": official_state, "optimizer_state": optimizer}, source)
    assert main(["convert", "--detector", "multiatt", str(source), str(tmp_path / "m.safetensors")]) == 0
    assert "multiatt, 2 output(s), input size 380" in capsys.readouterr().out
    model = checkpoints.load(tmp_path / "m.safetensors")
    with torch.no_grad():
        close(model.eval()(golden["input.x"]).logits, golden["eval.logits"])
    assert main(["convert", "--detector", "multiatt", "--num-classes", "1", str(source), str(tmp_path / "x")]) == 2
    assert "the head has 2 outputs, but num_classes=1 was asked" in capsys.readouterr().err


def test_imports_an_authors_first_stage_file(official_state, golden):
    """A stage-1 file (`Efb4`): B4 with its own 2-way classifier; heads built for `logits` are ignored."""
    state = {k: v for k, v in official_state.items() if k.startswith("net.")}
    state["texture_enhance.conv_extract.weight"] = torch.zeros(2, 2, 3, 3)  # the authors' stage-1 shapes (N = 2)
    model = checkpoints.import_weights("multiatt", state)
    assert model.config.stage == "backbone"
    with torch.no_grad():
        out = model.features(golden["input.x"])
    close(out["final"], golden["eval.layers.final"])
    pooled = golden["eval.layers.final"].mean((2, 3))
    close(out["logits"], pooled @ official_state["net._fc.weight"].t() + official_state["net._fc.bias"])


def test_refuses_deepfakebench_and_foreign_files(official_state):
    deepfakebench = {
        "backbone.efficientnet._conv_stem.weight": torch.zeros(48, 3, 3, 3),
        "texture_enhance.conv0.weight": torch.zeros(32, 32, 1, 1),
        "attention_generation.conv2.weight": torch.zeros(4, 160, 1, 1),
    }
    with pytest.raises(CheckpointError, match="DeepfakeBench's multi_attention .* texture block is v1"):
        checkpoints.import_weights("multiatt", deepfakebench)
    with pytest.raises(CheckpointError, match="no EfficientNet backbone"):
        checkpoints.import_weights("multiatt", {"encoder.conv1.weight": torch.zeros(1)})
    broken = {k: v for k, v in official_state.items() if k != "attentions.bn1.weight"}
    with pytest.raises(CheckpointError, match=r"state dict: weights do not fit a multiatt detector: 1 missing"):
        checkpoints.import_weights("multiatt", broken)


def test_advprop_weights_load_from_either_naming(tmp_path, official_state):
    """`model.pretrained`: lukemelas names (adv-efficientnet-b4-*.pth) or timm's (tf_efficientnet_b4.ap_in1k)."""
    lukemelas = {k.removeprefix("net."): v for k, v in official_state.items() if k.startswith("net.")}
    lukemelas["_fc.weight"], lukemelas["_fc.bias"] = torch.zeros(1000, 1792), torch.zeros(1000)
    torch.save(lukemelas, tmp_path / "adv-efficientnet-b4.pth")
    model = create_detector("multiatt", pretrained=str(tmp_path / "adv-efficientnet-b4.pth"))
    reference = imported(official_state)
    for key, value in reference.net.state_dict().items():
        assert torch.equal(model.net.state_dict()[key], value), key
    timm_named = {k: v for k, v in build_b4(1000).state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(timm_named, str(tmp_path / "model.safetensors"))
    again = create_detector("multiatt", stage="backbone", pretrained=str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(again.net.conv_head.weight, timm_named["conv_head.weight"])
    save_file({"conv_stem.weight": torch.zeros(1)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="wrong.safetensors: not EfficientNet-B4 ImageNet weights"):
        create_detector("multiatt", pretrained=str(tmp_path / "wrong.safetensors"))


@pytest.mark.parametrize(
    "name, size, stage",
    [
        ("native_stage1", 380, "backbone"),
        ("native", 380, "full"),
        ("ffpp_c23_stage1", 299, "backbone"),
        ("ffpp_c23", 299, "full"),
        ("wilddeepfake_stage1", 224, "backbone"),
        ("wilddeepfake", 224, "full"),
    ],
)
def test_configs_load(name, size, stage):
    root = os.path.join(os.path.dirname(__file__), "..", "configs", "multiatt")
    config = load_config(os.path.join(root, f"{name}.yaml"))
    assert config.model.name == "multiatt" and config.detector_config().stage == stage
    assert config.preprocess().input_size == size and config.optim.name == "adamw"
    if stage == "full":
        assert config.model.init_from == f"runs/multiatt_{name}_stage1/best.safetensors"
