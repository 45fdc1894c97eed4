"""The metadata of an exported model: a round trip, and one line for each way it can be wrong."""

import pytest

from mammodetr.config import RunConfig
from mammodetr.data.preprocess import PrepareOptions
from mammodetr.inference.onnx_metadata import OnnxMetadata, OnnxModelError, input_spec, read_metadata

SHA = "ab" * 32


def _metadata() -> OnnxMetadata:
    config = RunConfig()
    config.data.image_size, config.data.letterbox, config.data.prepare = 96, True, PrepareOptions(flip_to="L")
    spec = input_spec(config, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return OnnxMetadata(config, spec, SHA, {"epoch": 3, "operating_threshold": 0.4}, {"opset": 18})


def test_round_trip():
    md = _metadata()
    props = md.to_props()
    assert all(isinstance(v, str) for v in props.values()) and all(k.startswith("mammodetr.") for k in props)
    back = read_metadata(props, "m.onnx")
    assert back.config == md.config and back.input == md.input and back.export == md.export
    assert back.meta == {**md.meta, "weights_sha256": SHA} and back.weights_sha256 == SHA
    assert back.input["image_size"] == 96 and back.input["letterbox"] is True and back.input["channels"] == 1


@pytest.mark.parametrize("edit, expected", [
    (lambda p: p.clear(), "without mammodetr metadata"),
    (lambda p: p.update({"mammodetr.format": "x"}), "format 'x'"),
    (lambda p: p.pop("mammodetr.export"), "lacks mammodetr.export"),
    (lambda p: p.update({"mammodetr.input": "[1]"}), "mammodetr.input is not a JSON object"),
    (lambda p: p.update({"mammodetr.checkpoint_meta": "nan"}), "checkpoint_meta is not a JSON object"),
    (lambda p: p.update({"mammodetr.run_config": '{"data": {"image_size": "big"}}'}), "not a valid run config"),
    (lambda p: p.update({"mammodetr.weights_sha256": "AB" * 32}), "not a SHA-256"),
])
def test_wrong_metadata_is_one_line_naming_the_file(edit, expected):
    props = _metadata().to_props()
    edit(props)
    with pytest.raises(OnnxModelError, match=expected) as info:
        read_metadata(props, "dir/m.onnx")
    assert str(info.value).startswith("dir/m.onnx: ") and "\n" not in str(info.value)
