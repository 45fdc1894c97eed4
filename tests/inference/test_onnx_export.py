"""ONNX export of every registered backbone: onnxruntime (CPU) against PyTorch fp32, through the predictor."""

import time

import numpy as np
import pytest
import torch

from mammodetr.inference.decode import malignancy_probability
from mammodetr.inference.onnx_export import export_onnx
from mammodetr.inference.predictor import Predictor
from mammodetr.models.backbone import BACKBONES as REGISTERED

from ._tiny_models import BACKBONES, SIZE, tiny_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

TOL = 1e-4


def test_every_registered_backbone_is_exported():
    assert set(REGISTERED) <= set(BACKBONES)


# MambaVision's graph is the largest (the chunked selective scan): its export takes the longest.
@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.slow) if n == "mambavision_t" else n
                                        for n in BACKBONES])
def exported(request, tmp_path_factory):
    name = request.param
    model, config = tiny_model(name)
    model.train()
    model.backbone.eval()  # a mixed state: the export runs in eval mode and gives every module's mode back
    modes = {n: m.training for n, m in model.named_modules()}
    path = tmp_path_factory.mktemp(f"onnx_{name}") / "model.onnx"
    start = time.perf_counter()
    result = export_onnx(model, config, path)
    print(f"{name}: exported in {time.perf_counter() - start:.1f} s")
    assert {n: m.training for n, m in model.named_modules()} == modes
    return name, model.eval(), config, result


def _probabilities(outputs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the decoder reads from a forward: p_malignant, normalised cxcywh boxes, scores."""
    return (malignancy_probability(outputs["image_logits"]).double().numpy(),
            outputs["pred_boxes"].double().numpy(), outputs["pred_obj_logits"].double().sigmoid().numpy())


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(exported, batch):
    name, model, config, result = exported
    onnx_predictor = Predictor.from_onnx(result.path)
    torch_predictor = Predictor(model, config)
    assert not isinstance(onnx_predictor.model, torch.nn.Module)  # the viewer offers no Grad-CAM for it
    torch.manual_seed(batch)
    images = torch.rand(batch, 1, SIZE, SIZE) * torch.linspace(1.0, 0.3, batch).view(-1, 1, 1, 1)
    got, expected = _probabilities(onnx_predictor.forward(images)), _probabilities(torch_predictor.forward(images))
    for what, g, e in zip(("p_malignant", "boxes", "scores"), got, expected):
        assert g.shape == e.shape, (name, what)
        np.testing.assert_allclose(g, e, rtol=0, atol=TOL, err_msg=f"{name} {what} batch {batch}")
    if batch > 1:  # the images differ, so do their outputs: the batch items are not mixed up
        assert np.ptp(expected[0]) > 1e-3 and np.ptp(expected[1], axis=0).max() > 1e-3


def test_the_file_passes_the_full_checker_and_carries_its_metadata(exported):
    name, model, config, result = exported
    onnx.checker.check_model(str(result.path), full_check=True)
    proto = onnx.load(str(result.path))
    props = {p.key: p.value for p in proto.metadata_props}
    predictor = Predictor.from_onnx(result.path)
    assert predictor.config == config and predictor.geometry == config.data.geometry
    assert predictor.meta["weights_sha256"] == props["mammodetr.weights_sha256"]
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["p_malignant", "boxes_cxcywh", "scores"]  # no aux outputs
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, SIZE, SIZE]  # dynamic batch only
    assert max(result.parity.values()) <= TOL  # the export's own check ran
    spec = predictor.model.metadata.input
    assert (spec["mean"], spec["std"]) == (list(model.backbone.mean), list(model.backbone.std))
    assert predictor.model.metadata.export["opset"] == 18 == proto.opset_import[0].version


@pytest.mark.parametrize("exported", ["resnet50"], indirect=True)  # the check is the same for every backbone
def test_the_export_check_refuses_a_graph_that_differs(exported):
    from mammodetr.inference.onnx_export import ExportGraph, _check_parity

    name, model, config, result = exported
    changed, _ = tiny_model(name, seed=1)  # other weights: the file no longer matches this model
    with pytest.raises(RuntimeError, match="differs from PyTorch .* nothing was written"):
        _check_parity(ExportGraph(changed), result.path, None, SIZE)
    assert max(_check_parity(ExportGraph(model), result.path, None, SIZE).values()) <= TOL
