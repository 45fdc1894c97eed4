"""The one laterality rule: which image side the tags put the chest wall on."""

from __future__ import annotations

import pytest

from mammodetr.data.laterality import chest_wall_side, normalise_laterality


@pytest.mark.parametrize("value, expected", [
    ("L", "L"), ("left", "L"), (" Right ", "R"), ("r", "R"), ("B", None), ("", None), (None, None), (3, None),
])
def test_normalise_laterality(value, expected):
    assert normalise_laterality(value) == expected


@pytest.mark.parametrize("laterality, orientation, side", [
    ("L", None, "L"),  # standard display: a left breast against the image's left edge
    ("R", None, "R"),
    ("L", ["A", "R"], "L"),  # the nipple points to +x (anterior): chest wall on the left
    ("R", ["P", "L"], "R"),
    ("L", ["P", "L"], "R"),  # Patient Orientation wins over the laterality
    ("R", ["a", "f"], "L"),
    (None, ["P", "F"], "R"),
    (None, None, None),
    ("B", [], None),
    (None, ["F", "L"], None),  # a row direction that says nothing about the chest wall
])
def test_chest_wall_side(laterality, orientation, side):
    got, reason = chest_wall_side(laterality, orientation)
    assert got == side
    assert reason and "\n" not in reason
    if side is not None and orientation:
        assert "Patient Orientation" in reason


@pytest.mark.parametrize("name, expected", [
    ("LCC", ("L", "CC")), ("r_mlo", ("R", "MLO")), ("Calc-Test_P_00038_LEFT_CC", ("L", "CC")),
    ("20586908_6c613a14b80a8591_MG_R_CC_ANON", ("R", "CC")), ("L-MLO-2", ("L", "MLO")),
    ("scan_01", (None, None)), ("xcc", (None, None)), ("barcc", (None, None)), ("L_CC_R_MLO", (None, None)),
])
def test_view_from_name(name, expected):
    from mammodetr.data.laterality import view_from_name

    assert view_from_name(name) == expected
