import numpy as np
import pytest

from mammodetr.inference.predictions import Prediction, PredictionError, read_predictions, write_predictions


def test_round_trip(tmp_path):
    preds = [Prediction("a.png", 0.25, np.array([[1, 2, 3, 4.5]]), np.array([0.9]), warnings=["tiny_image: 1x1 px"]),
             PredictionError("b.dcm", "b.dcm: unreadable"),
             Prediction("c.png", 1.0, np.zeros((0, 4)), np.zeros(0))]
    back = read_predictions(write_predictions(tmp_path / "p.jsonl", preds))
    assert set(back.by_name) == {"a.png", "c.png"} and back.errors[0].file_name == "b.dcm"
    np.testing.assert_allclose(back.by_name["a.png"].boxes_xyxy_px, [[1, 2, 3, 4.5]])
    assert back.by_name["c.png"].boxes_xyxy_px.shape == (0, 4)
    assert back.by_name["a.png"].warnings == ["tiny_image: 1x1 px"] and back.by_name["c.png"].warnings == []
    assert "warnings" not in back.by_name["a.png"].extra
    zero_area = tmp_path / "z.jsonl"  # a box with x1 == x2 is degenerate, not inverted: kept
    zero_area.write_text('{"file_name": "z", "p_malignant": 0.1, "boxes": [[3, 1, 3, 4]], "scores": [0.5]}\n')
    assert read_predictions(zero_area).by_name["z"].boxes_xyxy_px.tolist() == [[3, 1, 3, 4]]


@pytest.mark.parametrize("line, message", [
    ('{"file_name": "a", "p_malignant": 0.5, "boxes": [[0, 0, 1, 1]], "scores": []}', "1 boxes but 0 scores"),
    ('{"file_name": "a", "p_malignant": 1.5}', "outside"),
    ('{"file_name": "a"}', "p_malignant"),
    ('{"p_malignant": 0.1}', "file_name"),
    ("not json", "not valid JSON"),
    ('{"file_name": "a", "p_malignant": 0.5, "boxes": [[0, 0, 1]], "scores": [0.1]}', "boxes must be"),
    ('{"file_name": "a", "p_malignant": 0.5, "boxes": [[0, 0, 2, 2], [5, 0, 1, 1]], "scores": [0.2, 0.1]}',
     r"'a' box 1 \[5.0, 0.0, 1.0, 1.0\] is inverted"),
    ('{"file_name": "a", "p_malignant": 0.5, "boxes": [[0, 3, 1, 1]], "scores": [0.1]}', "inverted"),
    ('{"file_name": "a", "p_malignant": 0.5, "warnings": "blank"}', "'warnings' must be a list of strings"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    f = tmp_path / "p.jsonl"
    f.write_text('{"file_name": "ok", "p_malignant": 0.1}\n' + line + "\n")
    with pytest.raises(ValueError, match=message) as e:
        read_predictions(f)
    assert f"{f}:2" in str(e.value)


def test_duplicate_file_name(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"file_name": "a", "p_malignant": 0.1}\n{"file_name": "a", "error": "x"}\n')
    with pytest.raises(ValueError, match="more than once"):
        read_predictions(f)
