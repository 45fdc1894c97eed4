"""Each recipe resolves to a valid config with the paper's settings (checked with --print-config)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
PAPER = ["resnet50", "convnextv2_tiny", "mambavision_t", "dinov3_vitb16"]


def _resolved(recipe: str, tmp_path) -> dict:
    out = subprocess.run(
        ["bash", str(RECIPES / f"{recipe}.sh"), str(tmp_path / "data"), str(tmp_path / "run"), "--print-config"],
        capture_output=True, text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin",
                                         # this checkout's code, not whichever mammodetr the interpreter has installed
                                         "PYTHONPATH": str(ROOT / "src")}, check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.parametrize("backbone", PAPER)
def test_paper_recipes(backbone, tmp_path):
    cfg = _resolved(backbone, tmp_path)
    assert cfg["model"]["backbone"] == backbone and cfg["model"]["pretrained"] == "hub"
    assert cfg["model"]["num_queries"] == 3
    assert (cfg["data"]["image_size"], cfg["train"]["batch_size"], cfg["optim"]["lr"]) == (512, 32, 1e-4)
    assert (cfg["train"]["epochs"], cfg["train"]["patience"]) == (400, 150)
    assert cfg["data"]["path"] == str(tmp_path / "data") and cfg["train"]["out"] == str(tmp_path / "run")


def test_cpu_smoke_recipe(tmp_path):
    cfg = _resolved("cpu_smoke", tmp_path)
    assert cfg["train"]["device"] == "cpu" and cfg["model"]["pretrained"] == "none"
    assert cfg["train"]["max_steps_per_epoch"] == 10 and cfg["data"]["image_size"] == 128


@pytest.mark.parametrize("recipe", PAPER + ["cpu_smoke"])
def test_every_recipe_config_round_trips(recipe, tmp_path):
    from mammodetr.config import RunConfig

    saved = _resolved(recipe, tmp_path)
    cfg = RunConfig.from_dict(saved)
    assert cfg.to_dict() == saved
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
