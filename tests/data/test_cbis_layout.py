"""The ways people unpack the CBIS-DDSM download, tried on the original CSV excerpts (tests/data/fixtures)."""

import shutil

import pytest

from mammodetr.cli import main as cli_main
from mammodetr.data.converters import convert

# The excerpts in tests/data/fixtures/cbis_ddsm name 69 distinct mammograms in 82 abnormality rows (counted with the
# csv module in test_cbis_ddsm_download.py).
N_IMAGES, N_ROWS = 69, 82


def _n_boxes(conv):
    return sum(len(r.boxes) for r in conv.records)


@pytest.mark.parametrize("tree, says", [
    ("", "relative to the CSVs' folder"),
    ("CBIS-DDSM", "relative to the CBIS-DDSM/ folder beside the CSVs"),
    ("my_download", "the only folder below the CSVs' folder"),
    ("manifest-1617905855234/CBIS-DDSM", "the only folder below the CSVs' folder"),
])
def test_layouts_are_found_and_named(cbis_download, tree, says):
    root = cbis_download(tree=tree)
    conv = convert("cbis-ddsm", root)
    assert says in conv.summary["layout"] and conv.summary["images_root"] == str(root / tree)
    assert conv.summary["image_folders_found"] == conv.summary["image_folders_named"] == N_IMAGES
    assert _n_boxes(conv) == N_ROWS and not conv.problems


def test_files_renamed_by_the_download_tool(cbis_download):
    """NBIA Data Retriever's descriptive names: <series folder>/<date-DDSM-n>/<n.000000-kind-n>/1-1.dcm."""
    root = cbis_download()
    tree = root / "CBIS-DDSM"
    for top in sorted(p for p in tree.iterdir() if p.is_dir()):
        for i, f in enumerate(sorted(top.rglob("*.dcm"))):
            dest = top / "07-20-2016-DDSM-74994" / f"{i + 1}.000000-images-{i}" / "1-1.dcm"
            dest.parent.mkdir(parents=True)
            f.rename(dest)
        for old in sorted((p for p in top.iterdir() if p.name.startswith("1.3.6")), reverse=True):
            shutil.rmtree(old)
    conv = convert("cbis-ddsm", root)
    assert _n_boxes(conv) == N_ROWS and conv.summary["duplicate_views_merged"] == 6 and not conv.problems


def test_nothing_found_stops_early_naming_the_layouts_and_the_flag(cbis_download, capsys):
    root = cbis_download(tree="somewhere/deeper/still")
    with pytest.raises(ValueError) as err:
        convert("cbis-ddsm", root)
    msg = str(err.value)
    assert f"none of the {N_IMAGES} image folders" in msg and "--images-dir" in msg
    assert str(root) in msg and str(root / "CBIS-DDSM") in msg and "\n" not in msg
    assert "P_0" not in msg  # no patient identifier in an error
    assert cli_main(["prepare", "--source", "cbis-ddsm", "--input", str(root), "--out", str(root / "out")]) == 2
    assert "--images-dir" in capsys.readouterr().err
    conv = convert("cbis-ddsm", root, images_dir=root / "somewhere/deeper/still")
    assert "--images-dir" in conv.summary["layout"] and _n_boxes(conv) == N_ROWS


def test_two_candidate_folders_and_the_jpeg_repackaging_are_named(cbis_download):
    root = cbis_download(tree="part1")
    shutil.copytree(root / "part1", root / "part2")
    (root / "jpeg").mkdir()
    with pytest.raises(ValueError, match="Several folders hold image folders") as err:
        convert("cbis-ddsm", root)
    assert "part1" in str(err.value) and "part2" in str(err.value) and "JPEG re-packaging" in str(err.value)


def test_wrong_images_dir_is_an_error(cbis_download):
    root = cbis_download()
    with pytest.raises(ValueError, match=r"looked in: .*elsewhere"):
        convert("cbis-ddsm", root, images_dir=root / "elsewhere")


def test_partial_download(cbis_download):
    missing = {"Mass-Training_P_00001_LEFT_CC/1.3.6.1.4.1.9590.100.1.2.422112722213189649807611434612228974994/"
               "1.3.6.1.4.1.9590.100.1.2.342386194811267636608694132590482924515/000000.dcm"}
    root = cbis_download(skip=missing)
    conv = convert("cbis-ddsm", root)
    lines = [p.line() for p in conv.problems]
    note = f"1 of the {N_IMAGES} image folders the CSVs name are missing (a partial download?)"
    assert any(note in ln for ln in lines)
    assert sum("image file not found" in ln for ln in lines) == 1
    assert _n_boxes(conv) == N_ROWS - 1


def test_input_is_the_image_tree_instead_of_the_csv_folder(cbis_download):
    root = cbis_download()
    with pytest.raises(ValueError, match="not inside the image download"):
        convert("cbis-ddsm", root / "CBIS-DDSM")
