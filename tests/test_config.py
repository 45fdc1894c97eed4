"""The typed run config: layers of overrides, frozen sections, errors that name the key, a lossless round trip."""

import pytest

from mammodetr.config import RunConfig, apply_overrides, parse_assignments
from mammodetr.data.preprocess import PrepareOptions


def test_defaults_round_trip():
    cfg = RunConfig()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_prepare_section_is_typed_and_checked():
    cfg = RunConfig.from_dict({"data": {"prepare": {"flip_to": "l", "max_side": 1024}}})
    assert cfg.data.prepare == PrepareOptions(flip_to="L", max_side=1024)
    apply_overrides(cfg, parse_assignments(["data.prepare.crop=false"]))
    assert cfg.data.prepare.crop is False and cfg.data.prepare.max_side == 1024
    with pytest.raises(ValueError, match="data.prepare.*flip_to"):
        apply_overrides(cfg, {"data": {"prepare": {"flip_to": "up"}}})
    apply_overrides(cfg, {"data": {"prepare": None}})
    assert cfg.data.prepare is None
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_keys_and_bad_values_name_the_key():
    with pytest.raises(ValueError, match="unknown config key 'model.d_modle'"):
        RunConfig.from_dict({"model": {"d_modle": 3}})
    with pytest.raises(ValueError, match="config key 'train.epochs'"):
        RunConfig.from_dict({"train": {"epochs": "many"}})
    with pytest.raises(ValueError, match="'data' is a section"):
        RunConfig.from_dict({"data": 3})


def test_set_strings_are_coerced():
    cfg = RunConfig()
    apply_overrides(cfg, parse_assignments(["model.dilations=[1, 3]", "train.compile=yes", "optim.lr=3e-4"]))
    assert cfg.model.dilations == (1, 3) and cfg.train.compile is True and cfg.optim.lr == 3e-4
