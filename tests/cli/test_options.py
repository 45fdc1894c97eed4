"""Flags generated from the typed configs."""

import argparse
import dataclasses

from mammodetr.cli.options import add_field_flag


@dataclasses.dataclass
class _Percent:
    """A config whose help text has a percent sign.

    Attributes:
        share: stop when the heads take over 10 % of a step (100% = all of it).
    """

    share: str = "5%"


def test_a_percent_sign_in_a_docstring_or_default_is_shown_literally():
    parser = argparse.ArgumentParser()
    add_field_flag(parser, _Percent, "share")
    text = " ".join(parser.format_help().split())
    assert "over 10 % of a step (100% = all of it). (default: 5%)" in text
    assert parser.parse_args([]).share is None and parser.parse_args(["--share", "7%"]).share == "7%"
