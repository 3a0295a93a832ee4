"""F³-Net (port of yyk-wew/F3Net): the heads against the port's golden vectors, the vectorised LFS against a
per-window loop, the importers for the port's and DeepfakeBench's state dicts, sizes 224 / 256, the MixBlock option."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import scipy.fft
import timm
import torch
import torch.nn.functional as F

from recce.detectors import DetectorConfigError, create_detector
from recce.detectors.base import Preprocess
from recce.detectors.f3net import F3Net, FrequencyAwareDecomposition, LocalFrequencyStatistics, MixBlock
from recce.detectors.layers.frequency import dct_matrix, soft_band_filters
from recce.engine.config import load_config
from recce.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIGS = Path(__file__).parents[1] / "configs" / "f3net"


@pytest.fixture(scope="module")
def golden(reference_dir):
    return safetensors.torch.load_file(str(reference_dir / "baselines" / "f3net_heads_golden.safetensors"))


def _port_head(golden, prefix: str, count: int) -> dict[str, torch.Tensor]:
    """The learnable filters of a port head, stacked as this project's head stores them (float16 → float32)."""
    return {"learnable": torch.stack([golden[f"{prefix}filters.{i}.learnable"].float() for i in range(count)])}


def _check_constants(head, golden, prefix: str, dct_key: str) -> None:
    """The DCT matrix and band masks built here are the port's (masks exactly)."""
    bases = torch.stack([golden[f"{prefix}filters.{i}.base"].float() for i in range(len(head.base))])
    assert torch.equal(head.base, bases)
    torch.testing.assert_close(head.dct, golden[prefix + dct_key], rtol=0, atol=1e-6)


def test_dct_matrix_is_the_orthonormal_dct_ii():
    d = dct_matrix(13, torch.float64)
    torch.testing.assert_close(d @ d.t(), torch.eye(13, dtype=torch.float64))
    x = np.random.default_rng(0).standard_normal((13, 13))
    expected = torch.from_numpy(scipy.fft.dctn(x, type=2, norm="ortho"))
    torch.testing.assert_close(d @ torch.from_numpy(x) @ d.t(), expected)


@pytest.mark.parametrize("unit", ["fad32", "fad299"])
def test_fad_head_matches_the_port(golden, unit):
    if unit == "fad32":
        prefix, x, expected = "unit.fad32.state.", golden["unit.fad32.x"], golden["unit.fad32.out"]
    else:  # the port's model at 299 px, sample 0 of the golden batch
        prefix, x = "yyk.both.state.FAD_head.", golden["yyk.input.x299"][:1]
        expected = golden["yyk.both.fad_head_out.sample0"]
    head = FrequencyAwareDecomposition(x.shape[-1])
    _check_constants(head, golden, prefix, "_DCT_all")
    head.load_state_dict(_port_head(golden, prefix, 4))
    with torch.no_grad():
        out = head(x)
    assert out.shape == (x.shape[0], 12, x.shape[-1], x.shape[-1])
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_fad_band_edges_at_299_are_the_ports():
    base = FrequencyAwareDecomposition(299).base
    diagonal = torch.arange(299)[:, None] + torch.arange(299)[None, :]
    for band, (start, end) in enumerate([(0, 106), (106, 149), (149, 598), (0, 598)]):
        assert torch.equal(base[band].bool(), (diagonal >= start) & (diagonal <= end))


def _float64_windows(x: torch.Tensor, head: LocalFrequencyStatistics) -> torch.Tensor:
    grey = 0.299 * x[:, 0].double() + 0.587 * x[:, 1].double() + 0.114 * x[:, 2].double()
    windows = F.unfold(((grey + 1) * 122.5)[:, None], head.window, padding=head.padding, stride=head.stride)
    return windows.transpose(1, 2).reshape(x.shape[0], -1, head.window, head.window)


def test_lfs_head_matches_the_port_within_float32_rounding(golden):
    """The LFS takes log10 of DCT coefficients, some of which are within float32 rounding of zero: there the
    result depends on the BLAS's summation order (the port's own code differs from the golden by up to 0.55 on this
    CPU). So every element must match within rtol 1e-4 / atol 1e-5 plus the float32 rounding of its coefficients
    propagated through log10 and the band mean (computed from float64 coefficients), and the windows whose
    coefficients are all far from zero must match within rtol 1e-4 / atol 1e-5 alone."""
    prefix, x = "yyk.both.state.LFS_head.", golden["yyk.input.x299"]
    head = LocalFrequencyStatistics()
    _check_constants(head, golden, prefix, "_DCT_patch")
    counts = torch.stack([golden[f"{prefix}filters.{i}.ft_num"].float() for i in range(6)])
    assert torch.equal(head.base.sum((1, 2)), counts)
    head.load_state_dict(_port_head(golden, prefix, 6))
    with torch.no_grad():
        out = head(x)
    expected = golden["yyk.both.lfs_head_out"]
    assert out.shape == expected.shape == (4, 6, 149, 149)

    patches = _float64_windows(x, head)
    d = head.dct.double()
    coefficients = (d @ patches @ d.t()).abs()
    rounding = 32 * 2.0**-24 * (d.abs() @ patches.abs() @ d.abs().t())  # float32: 20 multiply-adds and the input
    log_error = torch.where(
        coefficients > rounding,
        rounding / ((coefficients - rounding) * math.log(10)),
        torch.log10(coefficients + rounding) + 15,
    )
    with torch.no_grad():
        weights = (soft_band_filters(head.base, head.learnable).abs() / counts[:, None, None]).double()
    bound = (log_error.flatten(2) @ weights.flatten(1).t()).transpose(1, 2).reshape(expected.shape).float()
    excess = (out - expected).abs() - (1e-5 + 1e-4 * expected.abs() + bound)
    assert excess.max() <= 0, f"{int((excess > 0).sum())} elements beyond float32 rounding"
    # Windows whose coefficients all exceed 0.3 are well conditioned: there the strict tolerance holds by itself.
    well = (coefficients.flatten(2).amin(-1) > 0.3).reshape(4, 1, 149, 149).expand_as(out)
    assert well.float().mean() > 1e-3
    torch.testing.assert_close(out[well], expected[well], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", [16, 21])
def test_vectorised_lfs_equals_a_loop_over_windows(side):
    torch.manual_seed(side)
    head = LocalFrequencyStatistics().double()
    x = torch.rand(2, 3, side, side, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        out = head(x)
        filters = soft_band_filters(head.base, head.learnable)
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2] + 1) * 122.5
    padded = F.pad(grey, (4, 4, 4, 4))
    grid = (side + 8 - 10) // 2 + 1
    expected = torch.zeros(2, 6, grid, grid, dtype=torch.float64)
    d = head.dct
    for b in range(2):
        for i in range(grid):
            for j in range(grid):
                window = padded[b, 2 * i : 2 * i + 10, 2 * j : 2 * j + 10]
                magnitude = torch.log10((d @ window @ d.t()).abs() + 1e-15)
                for band in range(6):
                    expected[b, band, i, j] = (magnitude * filters[band]).sum() / head.base[band].sum()
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_mixblock_matches_the_port(golden, mode):
    block = MixBlock(8)
    prefix = "unit.mix8.state."
    block.load_state_dict({k.removeprefix(prefix).lower(): v for k, v in golden.items() if k.startswith(prefix)})
    block.train(mode == "train")
    with torch.no_grad():
        y_fad, y_lfs = block(golden["unit.mix8.x_fad"], golden["unit.mix8.x_lfs"])
    torch.testing.assert_close(y_fad, golden[f"unit.mix8.{mode}.y_fad"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_lfs, golden[f"unit.mix8.{mode}.y_lfs"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size, lfs_grid", [(224, 112), (256, 128)])
def test_forward_shapes_at_224_and_256(size, lfs_grid):
    model = F3Net(preprocess=Preprocess(input_size=size)).eval()
    assert model.lfs_head.grid(size, size) == (lfs_grid, lfs_grid)
    with torch.no_grad():
        out = model(torch.rand(1, 3, size, size) * 2 - 1)
    assert out.logits.shape == (1, 1)
    assert out.maps["high_frequency"].shape == (1, 1, size, size)
    assert set(out.maps) == set(F3Net.map_kinds)


def test_fad_head_rejects_another_size_in_one_line():
    with pytest.raises(ValueError, match="built for 64×64"):
        F3Net(mode="fad", preprocess=Preprocess(input_size=64))(torch.zeros(1, 3, 96, 96))


def test_mix_block_option_trains_and_is_off_by_default():
    assert not F3Net.Config().mix_block and "mix_block" in F3Net.choices
    model = F3Net(mix_block=True, preprocess=Preprocess(input_size=64)).train()
    images, labels = torch.rand(2, 3, 64, 64) * 2 - 1, torch.tensor([0, 1])
    losses = model.loss(model(images), images, labels, F3Net.Loss())
    losses["total"].backward()
    assert model.mix7.fad_query.weight.grad is not None and model.mix12.lfs_key.weight.grad is not None
    with pytest.raises(DetectorConfigError, match="mix_block needs mode 'both'"):
        create_detector("f3net", mode="fad", mix_block=True)
    with pytest.raises(DetectorConfigError, match="mode must be one of fad, lfs, both"):
        create_detector("f3net", mode="mix")


def test_imagenet_weights_fill_both_branches_with_copies_of_conv1(tmp_path):
    imagenet = timm.create_model("legacy_xception", pretrained=False).state_dict()
    path = tmp_path / "xception.safetensors"
    safetensors.torch.save_file(imagenet, str(path))
    model = create_detector("f3net", pretrained=str(path), preprocess=Preprocess(input_size=64))
    kernel = imagenet["conv1.weight"]
    torch.testing.assert_close(model.fad_encoder.conv1.weight, kernel.repeat(1, 4, 1, 1) / 4)
    torch.testing.assert_close(model.lfs_encoder.conv1.weight, kernel.repeat(1, 2, 1, 1) / 2)
    torch.testing.assert_close(
        model.fad_encoder.block5.rep[1].pointwise.weight, imagenet["block5.rep.1.pointwise.weight"]
    )


def _port_state(golden, source: F3Net) -> dict[str, torch.Tensor]:
    """The port's Both state dict (DataParallel `module.` keys): its real head keys, the encoders under its names."""
    state = {f"FAD_head.{k.removeprefix('yyk.both.state.FAD_head.')}": v for k, v in golden.items() if "FAD_head" in k}
    state |= {f"LFS_head.{k.removeprefix('yyk.both.state.LFS_head.')}": v for k, v in golden.items() if "LFS_head" in k}
    for ours, theirs in (("fad_encoder.", "FAD_xcep."), ("lfs_encoder.", "LFS_xcep.")):
        state |= {theirs + k.removeprefix(ours): v for k, v in source.state_dict().items() if k.startswith(ours)}
        state[f"{theirs}fc.weight"], state[f"{theirs}fc.bias"] = torch.zeros(1, 2048), torch.zeros(1)  # unused
    state |= {"fc.weight": source.fc.weight.detach(), "fc.bias": source.fc.bias.detach()}
    return {f"module.{k}": v for k, v in state.items()}


def test_port_importer_reads_each_mode_and_gives_the_port_heads(golden):
    source = F3Net()
    state = _port_state(golden, source)
    model = F3Net.from_reference(state, "port.pth")
    assert model.config.mode == "both" and model.preprocess.input_size == 299 and not model.training
    x = golden["yyk.input.x299"][:1]
    with torch.no_grad():
        torch.testing.assert_close(model.fad_head(x), golden["yyk.both.fad_head_out.sample0"], rtol=1e-4, atol=1e-5)
    for key, value in source.state_dict().items():
        if "encoder" in key:
            assert torch.equal(model.state_dict()[key], value), key
    for mode, dropped in (("fad", "LFS_"), ("lfs", "FAD_")):
        single = {k: v for k, v in state.items() if not k.startswith(f"module.{dropped}")}
        single["module.fc.weight"] = source.fc.weight.detach()[:, :2048]
        assert F3Net.from_reference(single, f"{mode}.pth").config.mode == mode


def test_deepfakebench_importer_gives_the_source_logits(golden):
    """DeepfakeBench: FAD branch only, `backbone.*` (with an unused adjust_channel), a 2-way `last_linear.1`."""
    source = F3Net(mode="fad", num_classes=2, preprocess=Preprocess(input_size=32)).eval()
    source.fad_head.load_state_dict(_port_head(golden, "unit.fad32.state.", 4))
    state = {f"backbone.{k.removeprefix('fad_encoder.')}": v for k, v in source.state_dict().items() if "encoder" in k}
    state |= {f"FAD_head.{k.removeprefix('unit.fad32.state.')}": v for k, v in golden.items() if "fad32.state" in k}
    state |= {
        "backbone.last_linear.1.weight": source.fc.weight.detach(),
        "backbone.last_linear.1.bias": source.fc.bias.detach(),
    }
    state |= {"backbone.adjust_channel.0.weight": torch.zeros(512, 2048, 1, 1)}
    model = F3Net.from_reference({f"module.{k}": v for k, v in state.items()}, "ckpt_best.pth")
    assert (model.config.mode, model.config.num_classes, model.preprocess.input_size) == ("fad", 2, 32)
    x = golden["unit.fad32.x"]
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, source(x).logits, rtol=1e-5, atol=1e-6)


def test_importer_errors_name_the_source_and_the_problem(golden):
    state = _port_state(golden, F3Net())
    broken = dict(state, **{"module.FAD_head.filters.0.base": torch.zeros(299, 299)})
    with pytest.raises(CheckpointError, match="bad.pth: the FAD_head DCT or band layout differs"):
        F3Net.from_reference(broken, "bad.pth")
    with pytest.raises(CheckpointError, match="other.pth: neither the port's"):
        F3Net.from_reference({"encoder.conv1.weight": torch.zeros(1)}, "other.pth")
    with pytest.raises(CheckpointError, match="num_classes=1, but num_classes=2"):
        F3Net.from_reference(state, "port.pth", num_classes=2)
    missing = {k: v for k, v in state.items() if "LFS_xcep.block3" not in k}
    with pytest.raises(CheckpointError, match="port.pth: weights do not fit a f3net detector: .* missing"):
        F3Net.from_reference(missing, "port.pth")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_load_with_the_ports_recipe(path):
    config = load_config(path)
    assert config.model.name == "f3net" and config.detector_config().mode == "both"
    assert (config.optim.lr, config.optim.weight_decay, config.optim.gamma) == (2e-4, 0.0, 1.0)
    assert config.preprocess().input_size == (224 if path.stem == "wilddeepfake" else 299)
    assert config.data.balance and config.data.flip_p == 0.5


def test_frequency_heads_run_in_float32_under_autocast():
    model = F3Net(preprocess=Preprocess(input_size=32)).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain = model(x).maps["high_frequency"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x).maps["high_frequency"]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
