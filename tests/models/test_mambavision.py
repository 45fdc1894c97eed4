"""MambaVision port: module tree vs. NVIDIA's key list, numerics vs. the official implementation,
windowing, block layout, gradients, backbone wrapper and weight-file loading."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mammodetr.models.mambavision import (
    DENSE_WINDOW_SIZES_512,
    Attention,
    MambaVision,
    MambaVisionBackbone,
    MambaVisionMixer,
    attention_block_indices,
    build_mambavision_backbone,
    load_mambavision_weights,
    mambavision_t,
    window_partition,
    window_reverse,
)
from mammodetr.models.weights import HubUnavailableError, WeightsError

# NVIDIA-implementation outputs live outside the repo; MAMMODETR_MAMBAVISION_REFERENCE points elsewhere.
REFERENCE_DIR = Path(
    os.environ.get("MAMMODETR_MAMBAVISION_REFERENCE")
    or Path(__file__).resolve().parents[3] / "shared" / "reference" / "mambavision"
)
KEY_LIST = REFERENCE_DIR / "mambavision_t_state_dict.txt"
REFERENCE = REFERENCE_DIR / "reference_small.pt"
needs_key_list = pytest.mark.skipif(not KEY_LIST.is_file(), reason=f"reference key list not found at {KEY_LIST}")
needs_reference = pytest.mark.skipif(not REFERENCE.is_file(), reason=f"reference outputs not found at {REFERENCE}")

# Small enough for fast tests; head counts must divide the stage widths (16*4 / 8, 16*8 / 16).
TINY = dict(dim=16, in_dim=8, depths=(1, 2, 3, 2), num_heads=(2, 4, 8, 16), window_size=(8, 8, 3, 2),
            mlp_ratio=2.0, drop_path_rate=0.0, num_classes=5)


def read_key_list() -> list[tuple[str, tuple[int, ...]]]:
    entries = []
    for line in KEY_LIST.read_text().splitlines():
        if line.strip():
            key, shape = line.split(" ", 1)
            entries.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return entries


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def model_t() -> MambaVision:
    return mambavision_t()


# ---------------------------------------------------------------------------------------------------------
# Module tree


@needs_key_list
def test_state_dict_keys_and_shapes_equal_reference_list(model_t: MambaVision) -> None:
    expected = read_key_list()
    got = [(k, tuple(v.shape)) for k, v in model_t.state_dict().items()]
    assert sorted(got) == sorted(expected)


@needs_key_list
def test_strict_load_of_reference_shaped_state_dict(model_t: MambaVision) -> None:
    g = torch.Generator().manual_seed(0)
    state = {
        k: torch.zeros(shape, dtype=torch.long) if k.endswith("num_batches_tracked")
        else torch.randn(shape, generator=g)
        for k, shape in read_key_list()
    }
    fresh = mambavision_t()
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(fresh.head.weight, state["head.weight"])


def test_parameter_count_matches_published_t(model_t: MambaVision) -> None:
    # 31,794,248 parameters (219 tensors) + 33 BatchNorm buffers, per the reference description.
    params = list(model_t.parameters())
    assert sum(p.numel() for p in params) == 31_794_248
    assert len(params) == 219 and len(model_t.state_dict()) == 252


# ---------------------------------------------------------------------------------------------------------
# Numerics vs. the official implementation


@pytest.fixture(scope="module")
def reference():
    data = torch.load(REFERENCE, weights_only=True)
    model = MambaVision(**data["config"]).eval()
    model.load_state_dict(data["state_dict"], strict=True)
    return model, data


@needs_reference
@pytest.mark.parametrize("case_index", [0, 1])
def test_matches_official_outputs(reference, case_index: int) -> None:
    model, data = reference
    case = data["cases"][case_index]
    with torch.no_grad():
        assert rel_err(model(case["input"]), case["logits"]) <= 1e-4
        feats = model.forward_stages(case["input"])
        assert len(feats) == len(case["stage_features"]) == 4
        for got, expected in zip(feats, case["stage_features"]):
            assert got.shape == expected.shape
            assert rel_err(got, expected) <= 1e-4
        mixer = model.levels[2].blocks[0].mixer
        assert isinstance(mixer, MambaVisionMixer)
        io = case["mixer_levels2_block0"]
        assert rel_err(mixer(io["inp"]), io["out"]) <= 1e-4


# ---------------------------------------------------------------------------------------------------------
# Windows and block layout


@pytest.mark.parametrize("hw,ws", [((13, 17), 5), ((10, 10), 5), ((3, 4), 7)])
def test_window_partition_reverse_round_trip_with_padding(hw: tuple[int, int], ws: int) -> None:
    h, w = hw
    x = torch.randn(2, 3, h, w)
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    padded = torch.nn.functional.pad(x, (0, wp - w, 0, hp - h))
    windows = window_partition(padded, ws)
    nh, nw = hp // ws, wp // ws
    assert windows.shape == (2 * nh * nw, ws * ws, 3)
    # Ordering: window index = (batch, window-row, window-column), token = row-major inside the window.
    b, wr, wc, r, c = 1, nh - 1, nw - 1, ws - 1, 0
    torch.testing.assert_close(windows[(b * nh + wr) * nw + wc, r * ws + c], padded[b, :, wr * ws + r, wc * ws + c])
    back = window_reverse(windows, ws, hp, wp)[:, :, :h, :w]
    assert torch.equal(back, x)


def test_window_partition_rejects_unpadded_map() -> None:
    with pytest.raises(ValueError, match="multiple of the window size"):
        window_partition(torch.zeros(1, 2, 5, 6), 4)


@pytest.mark.parametrize("depth", range(1, 10))
def test_attention_layout_rule(depth: int) -> None:
    # The first ceil(depth/2) blocks are Mamba, the last floor(depth/2) attention.
    assert attention_block_indices(depth) == list(range(math.ceil(depth / 2), depth))


def test_t_block_layout(model_t: MambaVision) -> None:
    kinds = [["A" if isinstance(b.mixer, Attention) else "M" for b in model_t.levels[i].blocks] for i in (2, 3)]
    assert kinds == [list("MMMMAAAA"), list("MMAA")]
    assert all(not hasattr(b, "mixer") for i in (0, 1) for b in model_t.levels[i].blocks)


# ---------------------------------------------------------------------------------------------------------
# Shapes, gradients, backbone


def test_forward_shapes_and_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = MambaVision(**TINY).train()
    x = torch.randn(2, 3, 72, 88)  # stage-3 map 5x6: padded to windows of 3
    feats = model.forward_stages(x)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 18, 22), (2, 32, 9, 11), (2, 64, 5, 6), (2, 128, 3, 3)]
    logits = model(x)
    assert logits.shape == (2, 5)
    (logits.square().sum() + sum(f.mean() for f in feats)).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad


def test_bf16_autocast_forward() -> None:
    model = MambaVision(**TINY).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(x)
    assert torch.isfinite(got).all()
    assert rel_err(got.float(), expected) < 0.1


def test_backbone_matches_model_stages_and_every_parameter_trains() -> None:
    torch.manual_seed(0)
    model = MambaVision(**TINY)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.eval().forward_stages(x)
    backbone = MambaVisionBackbone(model, out_indices=(0, -3, 3))
    assert backbone.channels == [16, 32, 128] and backbone.strides == [4, 8, 32]
    with torch.no_grad():
        got = backbone.eval()(x)
    for g, e in zip(got, [expected[0], expected[1], expected[3]]):
        torch.testing.assert_close(g, e)

    shallow = MambaVisionBackbone(MambaVision(**TINY), out_indices=(2,)).train()
    assert len(shallow.levels) == 3 and shallow.levels[-1].downsample is None
    sum(f.sum() for f in shallow(x)).backward()
    assert all(p.grad is not None for p in shallow.parameters())
    with pytest.raises(ValueError, match="multiple of the backbone's stride"):
        shallow(torch.zeros(1, 3, 40, 64))
    with pytest.raises(ValueError, match="out of range"):
        MambaVisionBackbone(MambaVision(**TINY), out_indices=(4,))


def test_build_backbone_from_registry() -> None:
    from mammodetr.models.backbone import build_backbone

    backbone = build_backbone("mambavision_t", pretrained="none", out_indices=(0, 1, 2, 3), unknown_option=1)
    assert isinstance(backbone, MambaVisionBackbone)
    assert backbone.channels == [80, 160, 320, 640] and backbone.strides == [4, 8, 16, 32]
    assert backbone.mean == (0.485, 0.456, 0.406) and backbone.std == (0.229, 0.224, 0.225)
    assert backbone.window_sizes == DENSE_WINDOW_SIZES_512
    # 512 px input -> stride-16 map 32x32, stride-32 map 16x16: the default windows cover each map.
    assert DENSE_WINDOW_SIZES_512 == (512 // 16, 512 // 32)
    custom = build_mambavision_backbone("none", out_indices=(-1,), window_sizes=(8, 8, 4, 2))
    assert custom.window_sizes == (4, 2) and custom.channels == [640]
    with torch.no_grad():
        (out,) = custom.eval()(torch.randn(1, 3, 96, 64))  # stage-4 map 3x2, padded to windows of 2
    assert out.shape == (1, 640, 3, 2) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="window_sizes"):
        build_mambavision_backbone("none", window_sizes=(7,))


# ---------------------------------------------------------------------------------------------------------
# Weight files


class NotAllowListed:
    """A pickled object outside the allow-list (must make the loader refuse the file)."""


def _perturbed_state(model: MambaVision) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        k: v + torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }


def test_load_hub_style_safetensors(tmp_path: Path) -> None:
    state = _perturbed_state(MambaVision(**TINY))
    path = tmp_path / "model.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in state.items()}, str(path))
    model = MambaVision(**TINY)
    load_mambavision_weights(model, path)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_load_training_checkpoint_pth_tar(tmp_path: Path) -> None:
    source = MambaVision(**TINY)
    state = _perturbed_state(source)
    optimizer = torch.optim.AdamW(source.parameters())
    path = tmp_path / "mambavision_tiny_1k.pth.tar"
    torch.save(
        {
            "epoch": 309,
            "arch": "mamba_vision_T",
            "state_dict": {"module." + k: v for k, v in state.items()},
            "optimizer": optimizer.state_dict(),
            "args": argparse.Namespace(model="mamba_vision_T", lr=5e-4, input_size=[3, 224, 224], data_dir=None),
            "metric": 82.3,
            "version": 2,
        },
        path,
    )
    model = MambaVision(**TINY)
    report = load_mambavision_weights(model, str(path))
    assert report is not None and not report.missing and not report.unexpected
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_checkpoint_with_other_globals_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": MambaVision(**TINY).state_dict(), "extra": NotAllowListed()}, path)
    with pytest.raises(WeightsError, match="weights_only"):
        load_mambavision_weights(MambaVision(**TINY), path)


def test_wrong_weights_are_a_named_error(tmp_path: Path) -> None:
    state = MambaVision(**TINY).state_dict()
    state.pop("head.bias")
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(WeightsError, match="head.bias"):
        load_mambavision_weights(MambaVision(**TINY), path)


def test_backbone_from_local_t_checkpoint(tmp_path: Path, model_t: MambaVision) -> None:
    state = {k: v.clone() for k, v in model_t.state_dict().items()}
    state["levels.2.blocks.0.mixer.A_log"] += 0.5
    path = tmp_path / "model.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in state.items()}, str(path))
    backbone = build_mambavision_backbone(str(path), out_indices=(2,))
    torch.testing.assert_close(backbone.levels[2].blocks[0].mixer.A_log, state["levels.2.blocks.0.mixer.A_log"])


def test_hub_offline_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(HubUnavailableError, match="pretrained='none'"):
        load_mambavision_weights(MambaVision(**TINY), "hub")


def test_hub_without_client_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes `import huggingface_hub` fail
    with pytest.raises(HubUnavailableError, match="huggingface_hub"):
        load_mambavision_weights(MambaVision(**TINY), "hub")


def test_hub_download_is_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    state = _perturbed_state(MambaVision(**TINY))
    path = tmp_path / "model.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")},
              str(path))
    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo_id, filename, **kw: calls.append((repo_id, filename)) or str(path))
    model = MambaVision(**TINY)
    load_mambavision_weights(model, "hub")
    assert calls == [("nvidia/MambaVision-T-1K", "model.safetensors")]
    torch.testing.assert_close(model.head.weight, state["head.weight"])


@needs_reference
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_matches_official_outputs_on_cuda(reference, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # TF32 convs alone exceed 1e-4
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    model, data = reference
    case = data["cases"][1]
    cuda_model = MambaVision(**data["config"]).cuda().eval()
    cuda_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert rel_err(cuda_model(case["input"].cuda()).cpu(), case["logits"]) <= 1e-4
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.isfinite(cuda_model(case["input"].cuda())).all()
