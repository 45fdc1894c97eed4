import pytest
import timm
import torch

from mammodetr.models.backbone import BACKBONES, build_backbone
from mammodetr.models.weights import HubUnavailableError, WeightsError


@pytest.mark.parametrize("name", ["resnet50", "convnextv2_tiny"])
def test_cnn_channels_and_strides_come_from_timm(name):
    bb = build_backbone(name, out_indices=(-3, -2, -1))
    info = timm.create_model(BACKBONES[name], pretrained=False).feature_info
    assert bb.channels == [f["num_chs"] for f in info][-3:]
    assert bb.strides == [8, 16, 32]
    feats = bb(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == bb.channels
    assert [64 // f.shape[-1] for f in feats] == bb.strides


def test_dinov3_drops_all_prefix_tokens_and_any_multiple_of_16():
    bb = build_backbone("dinov3_vitb16").eval()
    body = bb.body
    assert body.num_prefix_tokens == 5  # class + 4 registers
    x = torch.randn(1, 3, 48, 80)
    (feat,) = bb(x)
    assert feat.shape == (1, 768, 3, 5) and bb.strides == [16]
    # Independent path: run the blocks by hand, drop the 5 prefix tokens, reshape row-major.
    with torch.no_grad():
        tokens, rope = body._pos_embed(body.patch_embed(x))
        tokens = body.norm_pre(tokens)
        for blk in body.blocks:
            tokens = blk(tokens, rope=rope)
        want = body.norm(tokens)[:, 5:].reshape(1, 3, 5, 768).permute(0, 3, 1, 2)
    torch.testing.assert_close(feat, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="multiple"):
        bb(torch.zeros(1, 3, 40, 64))


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'not_a_model'"):
        build_backbone("not_a_model")


def test_escape_hatch_any_timm_name():
    bb = build_backbone("resnet18", out_indices=(-1,))
    assert bb.channels == [512] and bb.strides == [32]


def test_hub_offline_error_says_how_to_proceed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailableError, match="--pretrained none"):
        build_backbone("resnet18", pretrained="hub")


def _reference_state(name):
    torch.manual_seed(123)
    return timm.create_model(name, pretrained=False).state_dict()


def test_local_safetensors_and_torch_file_load_with_prefixes(tmp_path):
    from safetensors.torch import save_file

    ref = _reference_state("resnet18")
    st = tmp_path / "w.safetensors"
    save_file({f"model.{k}": v.contiguous() for k, v in ref.items()}, str(st))
    pt = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.items()}, "epoch": 3}, pt)
    for path in (st, pt):
        bb = build_backbone("resnet18", pretrained=str(path))
        own = bb.body.state_dict()
        assert own, "backbone has parameters"
        for k, v in own.items():
            torch.testing.assert_close(v, ref[k])


def test_corrupt_and_mismatched_files_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not safetensors")
    with pytest.raises(WeightsError, match="bad.safetensors"):
        build_backbone("resnet18", pretrained=str(bad))
    badpt = tmp_path / "bad.pth"
    badpt.write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="bad.pth"):
        build_backbone("resnet18", pretrained=str(badpt))
    other = tmp_path / "other.pth"
    torch.save(_reference_state("resnet34"), other)  # same key names, different shapes in places
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, wrong)
    with pytest.raises(WeightsError, match="wrong shape"):
        build_backbone("resnet18", pretrained=str(wrong))
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"foo.bar": torch.zeros(2)}, unrelated)
    with pytest.raises(WeightsError, match="no key"):
        build_backbone("resnet18", pretrained=str(unrelated))
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_unsafe_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        build_backbone("resnet18", pretrained=str(path))
