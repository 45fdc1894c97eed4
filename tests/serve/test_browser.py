"""The viewer page in a real browser: Debian's chromium driven by playwright (never ``playwright install``).

Skipped, with the reason shown, only where chromium or the playwright package is missing (``.ci/run`` installs
chromium). Screenshots are written to the test's tmp_path.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ._server import gray_stats, start_server, stop_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
SLOTS = ("RCC", "LCC", "RMLO", "LMLO")


@pytest.fixture(scope="module")
def server(viewer_data, tmp_path_factory):
    s = start_server(viewer_data, tmp_path_factory.mktemp("browser"))
    yield s
    stop_server(s)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip("chromium is not installed (apt-get install -y chromium); the browser tests cannot run")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright); the browser tests cannot run")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1280, "height": 860})
    problems = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    refused_upload = "the server responded with a status of 400"  # the text-file upload test
    pg.on("console", lambda m: problems.append(m.text) if m.type == "error" and refused_upload not in m.text
          else None)
    pg.goto(server.url)
    pg.wait_for_selector("body[data-state=ready]", timeout=60_000)
    yield pg
    pg.close()
    assert not problems, problems  # no script error, no Content-Security-Policy violation


def api(server, path, method="GET"):
    req = urllib.request.Request(server.url.rstrip("/") + path, method=method)
    with urllib.request.urlopen(req, timeout=120) as res:
        return json.loads(res.read())


def canvas(pg, slot) -> np.ndarray:
    """The view's canvas as (H, W, 4) uint8 (read back as a lossless PNG)."""
    from PIL import Image

    url = pg.eval_on_selector(f'.view[data-view="{slot}"] canvas', "c => c.toDataURL('image/png')")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def shown_exam(pg, server) -> dict:
    label = pg.eval_on_selector("#exam-select", "s => s.options[s.selectedIndex].textContent")
    exams = api(server, "/api/exams")["exams"]
    return next(e for e in exams if label.startswith(e["label"] + " ("))


def chest_wall_is_inner(rgba: np.ndarray, slot: str) -> bool:
    """The breast's chest wall (its full-height edge) faces the middle of the hanging."""
    lit = rgba[..., :3].max(-1) > 30
    cols = np.flatnonzero(lit.any(0))
    coverage = lit[:, cols[0]:cols[-1] + 1].mean(0)
    centroid = (coverage * np.arange(coverage.size)).sum() / coverage.sum()
    towards_right = centroid > (coverage.size - 1) / 2
    return towards_right if slot.startswith("R") else not towards_right


def set_slider(pg, selector, value):
    pg.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", str(value))


def test_four_views_hang_in_place_with_chest_walls_in_the_middle(page, server, tmp_path):
    page.screenshot(path=str(tmp_path / "viewer.png"))
    boxes = {s: page.eval_on_selector(f'.view[data-view="{s}"]', "e => e.getBoundingClientRect().toJSON()")
             for s in SLOTS}
    assert boxes["RCC"]["x"] < boxes["LCC"]["x"] and boxes["RMLO"]["x"] < boxes["LMLO"]["x"]
    assert boxes["RCC"]["y"] < boxes["RMLO"]["y"] and boxes["LCC"]["y"] < boxes["LMLO"]["y"]
    exam = shown_exam(page, server)
    for slot in SLOTS:
        assert page.eval_on_selector(f'.view[data-view="{slot}"] canvas', "c => c.dataset.imageId") == \
            exam["views"][slot]
        rgba = canvas(page, slot)
        assert gray_stats(rgba)["lit"] > 0.1 * rgba.shape[0] * rgba.shape[1], slot
        assert chest_wall_is_inner(rgba, slot), slot


def test_a_mirrored_image_is_flipped_for_the_hanging(page, server, tmp_path):
    index = next(i for i, e in enumerate(api(server, "/api/exams")["exams"]) if e["label"] == "png_case")
    page.select_option("#exam-select", str(index))
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    page.screenshot(path=str(tmp_path / "png_case.png"))
    assert page.eval_on_selector('.view[data-view="RCC"] canvas', "c => c.dataset.flip") == "true"
    assert page.eval_on_selector('.view[data-view="LCC"] canvas', "c => c.dataset.flip") == "false"
    for slot in ("RCC", "LCC"):
        assert chest_wall_is_inner(canvas(page, slot), slot), slot
    for slot in ("RMLO", "LMLO"):
        assert page.is_visible(f'.view[data-view="{slot}"] .missing') and gray_stats(canvas(page, slot))["lit"] == 0


def test_probability_text_equals_the_api(page, server):
    exam = shown_exam(page, server)
    records = api(server, f"/api/exams/{exam['id']}/predict", "POST")["records"]
    ex = records[-1]
    assert page.inner_text("#p-exam") == f"{ex['p_malignant']:.3f}"
    for b in (r for r in records if r["record"] == "breast"):
        assert page.inner_text(f"#p-breast-{b['laterality']}") == f"{b['p_malignant']:.3f}"
    for r in (r for r in records if r["record"] == "image"):
        slot = next(s for s, i in exam["views"].items() if i == r["image_id"])
        assert page.inner_text(f'.view[data-view="{slot}"] .prob') == f"{r['p_malignant']:.3f}"
    assert "0.50" in page.inner_text("#operating-point")


def test_drawn_boxes_are_the_predictions_above_the_slider(page, server):
    exam = shown_exam(page, server)
    records = [r for r in api(server, f"/api/exams/{exam['id']}/predict", "POST")["records"] if r["record"] == "image"]
    scores = {next(s for s, i in exam["views"].items() if i == r["image_id"]): r["scores"] for r in records}
    all_scores = sorted(s for v in scores.values() for s in v)
    for t in (0.0, round(float(np.median(all_scores)), 2), 1.0):
        set_slider(page, "#score-threshold", t)
        for slot in SLOTS:
            drawn = int(page.eval_on_selector(f'.view[data-view="{slot}"] canvas', "c => c.dataset.boxesDrawn"))
            assert drawn == sum(s >= t for s in scores[slot]), (slot, t)
    set_slider(page, "#score-threshold", 0.0)
    assert gray_stats(canvas(page, "RCC"))["yellow"] > 0  # the boxes are on the canvas
    page.keyboard.press("b")
    assert not page.is_checked("#show-boxes")
    assert gray_stats(canvas(page, "RCC"))["yellow"] == 0


def test_window_level_drag_presets_and_reset_change_the_pixels(page):
    before, other = canvas(page, "LCC"), canvas(page, "RMLO")
    box = page.eval_on_selector('.view[data-view="LCC"] canvas', "e => e.getBoundingClientRect().toJSON()")
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x - 120, y - 60, steps=6)
    page.mouse.up()
    page.wait_for_function("document.querySelector('#wl-readout').textContent.includes('0.')")
    page.wait_for_timeout(100)
    dragged = canvas(page, "LCC")
    assert np.abs(dragged.astype(int) - before.astype(int)).sum() > 0
    assert not np.array_equal(canvas(page, "RMLO"), other)  # every view follows
    page.keyboard.press("r")
    page.wait_for_timeout(150)
    assert np.array_equal(canvas(page, "LCC"), before)
    page.select_option("#wl-preset", "full")
    page.wait_for_timeout(150)
    assert not np.array_equal(canvas(page, "LCC"), before)


def test_heatmap_toggle_overlays_and_removes_grad_cam(page, tmp_path):
    page.keyboard.press("b")  # boxes off: the picture is pure grey until the heatmap is on
    assert gray_stats(canvas(page, "RCC"))["coloured"] == 0
    page.keyboard.press("h")
    page.wait_for_selector("body[data-heatmap=on]", timeout=60_000)
    page.screenshot(path=str(tmp_path / "heatmap.png"))
    for slot in SLOTS:
        assert gray_stats(canvas(page, slot))["coloured"] > 100, slot
    set_slider(page, "#heatmap-opacity", 0)
    assert gray_stats(canvas(page, "RCC"))["coloured"] == 0
    set_slider(page, "#heatmap-opacity", 0.6)
    page.keyboard.press("h")
    page.wait_for_selector("body[data-heatmap=off]")
    assert gray_stats(canvas(page, "RCC"))["coloured"] == 0


def test_next_exam_key_and_a_missing_view(page, server):
    first = shown_exam(page, server)
    page.keyboard.press("n")
    page.wait_for_function("s => document.querySelector('#exam-select').value !== s", arg="0")
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    second = shown_exam(page, server)
    assert second["id"] != first["id"]
    if second["missing_views"]:
        slot = second["missing_views"][0]
        assert page.is_visible(f'.view[data-view="{slot}"] .missing')
        assert slot in page.inner_text("#missing-views")


def test_uploading_a_dicom_shows_its_prediction(page, server, viewer_data, tmp_path):
    page.set_input_files("#upload", str(viewer_data.upload_dicom))
    page.wait_for_selector("body[data-upload=done]", timeout=60_000)
    page.wait_for_selector("body[data-state=ready]", timeout=60_000)
    exam = shown_exam(page, server)
    assert exam["source"] == "upload" and list(exam["views"]) == ["LCC"]
    records = api(server, f"/api/exams/{exam['id']}/predict", "POST")["records"]
    assert page.inner_text('.view[data-view="LCC"] .prob') == f"{records[0]['p_malignant']:.3f}"
    assert page.inner_text("#p-exam") == f"{records[-1]['p_malignant']:.3f}"
    assert gray_stats(canvas(page, "LCC"))["lit"] > 0
    page.screenshot(path=str(tmp_path / "upload.png"))


def test_uploading_a_text_file_shows_a_clear_error(page, tmp_path):
    note = tmp_path / "report.txt"
    note.write_text("not an image\n")
    page.set_input_files("#upload", str(note))
    page.wait_for_selector("body[data-upload=error]", timeout=60_000)
    assert page.is_visible("#error")
    assert "report.txt: not a DICOM file" in page.inner_text("#error")
    page.screenshot(path=str(tmp_path / "upload_error.png"))
