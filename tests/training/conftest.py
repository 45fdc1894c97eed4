import pytest

from mammodetr.cli import main as cli

TINY_MODEL = [
    "--backbone", "test_convnext", "--pretrained", "none", "--image-size", "64", "--batch-size", "4",
    "--workers", "0", "--no-progress", "--set", "model.d_model=32", "--set", "model.nheads=4",
    "--set", "model.dec_layers=2", "--set", "model.dim_feedforward=64", "--set", "model.dropout=0.1",
    "--set", "optim.warmup_epochs=0",
]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """synth (PNG) -> prepare -> split: 6 patients x 4 views, 128 x 104 px."""
    root = tmp_path_factory.mktemp("tiny")
    assert cli(["synth", "--out", str(root / "raw"), "--patients", "6", "--size", "128", "104", "--format", "png",
                "--seed", "1", "--no-progress"]) == 0
    assert cli(["prepare", "--source", "csv", "--input", str(root / "raw" / "table.csv"), "--out", str(root / "ds"),
                "--workers", "1"]) == 0
    assert cli(["split", "--data", str(root / "ds"), "--seed", "0", "--fractions", "0.5", "0.25", "0.25"]) == 0
    return root / "ds"
