"""One error handler for every command: user errors are one line and exit 2, internal failures exit 1, and
``--debug`` shows the traceback. Flags are generated from the typed configs."""

import dataclasses
import subprocess
import sys

import pytest

from mammodetr.cli import COMMANDS, main
from mammodetr.cli.options import field_help


def test_user_error_is_one_line_on_stderr(tmp_path, capsys):
    code = main(["evaluate", "--data", str(tmp_path / "nowhere"), "--predictions", str(tmp_path / "p.jsonl"),
                 "--out", str(tmp_path / "e")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mammodetr evaluate: error: ") and "p.jsonl" in lines[0]


def test_internal_error_is_one_line_and_debug_shows_the_traceback(monkeypatch, capsys):
    from mammodetr.cli import split

    def broken(args):
        raise KeyError("bug")

    monkeypatch.setattr(split, "run", broken)
    assert main(["split", "--data", "x"]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err and "Traceback" not in err
    assert main(["split", "--data", "x", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_every_command_has_help_and_the_device_default_is_auto():
    for name in COMMANDS:
        out = subprocess.run([sys.executable, "-m", "mammodetr", name, "--help"], capture_output=True, text=True)
        assert out.returncode == 0, (name, out.stderr)
        if "--device" in out.stdout:
            assert "default: auto" in " ".join(out.stdout.split()), name


def test_every_flag_dataclass_documents_every_field():
    from mammodetr.config import DataConfig, OptimConfig, TrainConfig
    from mammodetr.data.preprocess import PrepareOptions
    from mammodetr.data.synth import SynthOptions
    from mammodetr.metrics.scoring import EvaluationOptions
    from mammodetr.models.config import LossConfig, ModelConfig

    for cls in (DataConfig, OptimConfig, TrainConfig, ModelConfig, LossConfig, PrepareOptions, SynthOptions,
                EvaluationOptions):
        helps = field_help(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not helps.get(f.name)]
        assert not missing, f"{cls.__name__}: no help text for {missing}"


@pytest.mark.parametrize("argv, expected", [
    (["--max-side", "none", "--no-crop", "--flip-to", "R"], {"max_side": None, "crop": False, "flip_to": "R"}),
    ([], {}),
])
def test_generated_flags_only_override_what_was_given(argv, expected):
    from mammodetr.cli import build_parser
    from mammodetr.cli.options import given
    from mammodetr.data.preprocess import PrepareOptions

    args = build_parser("prepare").parse_args(["prepare", "--source", "csv", "--input", "t.csv", "--out", "o", *argv])
    assert given(args, PrepareOptions) == expected
