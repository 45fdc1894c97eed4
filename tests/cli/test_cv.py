"""``mammodetr cv``: every train flag plus the fold flags; user errors are one line and exit 2."""

from __future__ import annotations

import json

from mammodetr.cli import build_parser, main
from mammodetr.cli.train import FLAGS


def test_cv_accepts_every_train_flag_and_the_fold_flags(capsys):
    parser = build_parser("cv")
    sub = next(a for a in parser._actions if a.dest == "command").choices["cv"]
    flags = {opt for action in sub._actions for opt in action.option_strings}
    assert set(FLAGS) <= flags and {"--config", "--set"} <= flags
    assert {"--folds", "--val-fraction", "--fold-seed", "--checkpoint", "--bootstrap"} <= flags
    assert main(["cv", "--data", "ds", "--folds", "10", "--lr", "3e-4", "--set", "model.d_model=64",
                 "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["cv"]["folds"] == 10 and printed["cv"]["val_fraction"] == 0.15
    assert printed["config"]["optim"]["lr"] == 3e-4 and printed["config"]["model"]["d_model"] == 64
    assert printed["config"]["train"]["out"] == "runs/cv"


def test_cv_user_errors_are_one_line(tmp_path, capsys):
    assert main(["cv", "--data", str(tmp_path), "--folds", "1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mammodetr cv: error: folds must be at least 2, got 1"]
    assert main(["cv", "--out", str(tmp_path / "o")]) == 2
    assert "no dataset: pass --data" in capsys.readouterr().err
    assert main(["cv", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "annotations.json: not found" in capsys.readouterr().err
