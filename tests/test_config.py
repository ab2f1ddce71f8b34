from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hpt.config import apply_overrides, deep_merge, from_dict, to_dict
from hpt.errors import HptError


@dataclass
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=list)
    pair: tuple[float, float] = (0.1, 0.2)


@dataclass
class Outer:
    steps: int
    mode: str = "all"
    inner: Inner = field(default_factory=Inner)
    width: int | None = None


def test_valid_mapping_builds_nested_dataclasses() -> None:
    cfg = from_dict(Outer, {"steps": 5, "inner": {"rate": 1, "pair": [0.3, 0.4]}})
    assert cfg.steps == 5 and cfg.inner.rate == 1.0 and cfg.inner.pair == (0.3, 0.4) and cfg.width is None


def test_unknown_key_names_it_the_valid_keys_and_a_guess() -> None:
    with pytest.raises(HptError) as err:
        from_dict(Outer, {"steps": 5, "inner": {"rtae": 1}})
    message = str(err.value)
    assert "'inner.rtae'" in message and "did you mean 'rate'" in message and "names, pair, rate" in message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({}, "missing config key 'steps'"),
        ({"steps": "ten"}, "steps must be an integer"),
        ({"steps": True}, "steps must be an integer"),
        ({"steps": 1, "inner": {"pair": [1]}}, "inner.pair must have 2 values"),
        ({"steps": 1, "inner": 3}, "must be a mapping"),
        ({"steps": 1, "width": "wide"}, "width must be an integer"),
    ],
)
def test_bad_values_are_named(data: dict, fragment: str) -> None:
    with pytest.raises(HptError, match=fragment):
        from_dict(Outer, data)


def test_overrides_by_name_index_and_nested_key() -> None:
    raw = {"stages": [{"name": "source", "steps": 5}, {"name": "target", "steps": 5}], "base": {}}
    apply_overrides(raw, ["stages.target.steps=100", "stages.0.lr=0.1", "base.arch=resnet18", "a.b=[1, 2]"])
    assert raw["stages"][1]["steps"] == 100 and raw["stages"][0]["lr"] == 0.1
    assert raw["base"]["arch"] == "resnet18" and raw["a"]["b"] == [1, 2]
    with pytest.raises(HptError, match="no item named 'tgt'"):
        apply_overrides(raw, ["stages.tgt.steps=1"])
    with pytest.raises(HptError, match="key.path=value"):
        apply_overrides(raw, ["steps"])


def test_deep_merge_and_to_dict_round_trip() -> None:
    merged = deep_merge({"moco": {"dim": 128, "momentum": 0.999}, "lr": 1}, {"moco": {"momentum": 0.99}})
    assert merged == {"moco": {"dim": 128, "momentum": 0.99}, "lr": 1}
    cfg = from_dict(Outer, {"steps": 3, "inner": {"names": ["a"]}})
    assert from_dict(Outer, to_dict(cfg)) == cfg
