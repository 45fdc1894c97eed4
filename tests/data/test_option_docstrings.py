"""Options a user sets from the command line document every field in one line (CLI help is built from them)."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from mammodetr.data.preprocess import PrepareOptions
from mammodetr.data.synth import SynthOptions


def attributes_section(cls) -> dict[str, str]:
    """``name -> help`` from the Google-style ``Attributes:`` section; a continuation line is an error."""
    lines = inspect.getdoc(cls).splitlines()
    start = lines.index("Attributes:") + 1
    entries: dict[str, str] = {}
    for line in lines[start:]:
        if not line.strip():
            break
        m = re.fullmatch(r"    (\w+): (\S.*)", line)
        assert m, f"{cls.__name__}: not a one-line 'name: help' entry: {line!r}"
        entries[m.group(1)] = m.group(2)
    return entries


@pytest.mark.parametrize("cls", [PrepareOptions, SynthOptions])
def test_every_field_has_a_one_line_help(cls):
    entries = attributes_section(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    assert list(entries) == names, f"{cls.__name__}: Attributes lists {list(entries)}, fields are {names}"
    assert all(len(text) <= 110 for text in entries.values())
