from mammodetr.data.counts import count_table, format_count_table


def _img(i, patient, label, split):
    return {"id": i, "patient_id": patient, "label": label, "official_split": split}


IMAGES = [
    _img(1, "a", "malignant", "train"), _img(2, "a", "benign", "train"), _img(3, "b", "normal", "train"),
    _img(4, "c", "benign", "test"), _img(5, "a", "normal", "test"),  # patient a is in both splits
]
ANNOTATIONS = [
    {"image_id": 1, "pathology": "malignant"}, {"image_id": 1, "pathology": "benign"},
    {"image_id": 2, "pathology": "benign"}, {"image_id": 4, "pathology": None},
]


def test_rows_per_official_split_and_total():
    rows = {r["split"]: r for r in count_table(IMAGES, ANNOTATIONS)["rows"]}
    assert list(rows) == ["train", "test", "total"]
    assert rows["train"]["images"] == {"total": 3, "normal": 1, "benign": 1, "malignant": 1}
    assert rows["train"]["patients"] == {"total": 2, "normal": 1, "benign": 0, "malignant": 1}
    assert rows["test"]["patients"] == {"total": 2, "normal": 1, "benign": 1, "malignant": 0}
    assert rows["total"]["patients"] == {"total": 3, "normal": 1, "benign": 1, "malignant": 1}  # a counted once
    assert rows["train"]["boxes"] == {"total": 3, "benign": 2, "malignant": 1, "unknown": 0}
    assert rows["test"]["boxes"] == {"total": 1, "benign": 0, "malignant": 0, "unknown": 1}


def test_without_official_split_only_the_total_row():
    images = [dict(img, official_split=None) for img in IMAGES]
    table = count_table(images, ANNOTATIONS)
    assert [r["split"] for r in table["rows"]] == ["total"]
    some = [dict(IMAGES[0], official_split=None), *IMAGES[1:]]
    assert [r["split"] for r in count_table(some, [])["rows"]] == ["train", "test", "none", "total"]


def test_text_table_lines_up():
    lines = format_count_table(count_table(IMAGES, ANNOTATIONS)).splitlines()
    assert len(lines) == 5 and len({len(line) for line in lines}) == 1
    assert lines[1].split()[:5] == ["split", "total", "normal", "benign", "malignant"]
    assert lines[4].split() == ["total", "5", "2", "2", "1", "3", "1", "1", "1", "4", "2", "1", "1"]
