"""Data spec parsing: string and mapping forms, canonical describe(), inference, and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpt.data import DataSpec, moved_data, parse_data_spec
from hpt.errors import HptError


def test_string_form_with_options() -> None:
    spec = parse_data_spec("npz:../shared/data/pneumoniamnist_28.npz?split=val&fraction=0.1&seed=3")
    assert spec == DataSpec(kind="npz", path=Path("../shared/data/pneumoniamnist_28.npz"), split="val",
                            fraction=0.1, seed=3)


def test_csv_string_form() -> None:
    spec = parse_data_spec("csv:/data/chexpert/train.csv?path_column=Path&label_columns=Atelectasis,Edema"
                           "&root=/data/chexpert&uncertain=ones")
    assert spec.kind == "csv"
    assert spec.path_column == "Path"
    assert spec.label_columns == ("Atelectasis", "Edema")
    assert spec.root == Path("/data/chexpert")
    assert spec.uncertain == "ones"


def test_mapping_form_equals_string_form() -> None:
    mapping = {"kind": "folder", "path": "/data/xrays", "size": 64, "classes": [2, 0], "grayscale": True,
               "skip_corrupt": "yes", "count": 100}
    spec = parse_data_spec(mapping)
    assert spec == parse_data_spec("folder:/data/xrays?size=64&classes=2,0&grayscale=true&skip_corrupt=1&count=100")
    assert spec.classes == (2, 0)


@pytest.mark.parametrize("text", [
    "npz:a.npz",
    "npz:dir/a.npz?split=all&count=10&seed=5&classes=3,1&size=32&grayscale=false",
    "folder:/x/y?split=val&fraction=0.25&skip_corrupt=true",
    "csv:lists/t.csv?path_column=Path&label_columns=No%20Finding,Edema&root=imgs&uncertain=ones",
])
def test_describe_round_trips(text: str) -> None:
    spec = parse_data_spec(text)
    assert parse_data_spec(spec.describe()) == spec
    assert parse_data_spec(spec.describe()).describe() == spec.describe()


def test_describe_is_canonical() -> None:
    a = parse_data_spec("npz:a.npz?seed=0&split=train&size=32&fraction=0.5")
    b = parse_data_spec({"path": "a.npz", "fraction": 0.5, "size": 32})
    assert a.describe() == b.describe() == "npz:a.npz?fraction=0.5&size=32"


def test_percent_decoding_of_values() -> None:
    spec = parse_data_spec("csv:t.csv?label_columns=A%26B,Pleural%20Effusion")
    assert spec.label_columns == ("A&B", "Pleural Effusion")


def test_bare_path_inference(tmp_path: Path) -> None:
    assert parse_data_spec("x/data.npz?split=test").kind == "npz"
    assert parse_data_spec("x/list.CSV").kind == "csv"
    assert parse_data_spec(str(tmp_path)).kind == "folder"
    assert parse_data_spec({"path": str(tmp_path)}).kind == "folder"
    with pytest.raises(HptError, match="npz:PATH, folder:PATH or csv:PATH"):
        parse_data_spec(str(tmp_path / "nothing-here"))


def test_dataspec_passthrough_and_direct_construction() -> None:
    spec = DataSpec(kind="npz", path="a.npz", classes=[1, 2])  # type: ignore[arg-type]
    assert spec.path == Path("a.npz") and spec.classes == (1, 2)
    assert parse_data_spec(spec) is spec


def test_unknown_key_names_key_and_valid_keys() -> None:
    with pytest.raises(HptError) as err:
        parse_data_spec("npz:a.npz?fration=0.1")
    msg = str(err.value)
    assert "'fration'" in msg and "did you mean 'fraction'" in msg and "split, fraction, count" in msg


def test_unknown_key_in_mapping() -> None:
    with pytest.raises(HptError, match="unknown data spec key 'spilt'.*did you mean 'split'"):
        parse_data_spec({"kind": "npz", "path": "a.npz", "spilt": "val"})


@pytest.mark.parametrize("text, pattern", [
    ("npz:a.npz?fraction=0", r"fraction must be in \(0, 1\]"),
    ("npz:a.npz?fraction=1.5", r"fraction must be in \(0, 1\]"),
    ("npz:a.npz?fraction=abc", "not a number"),
    ("npz:a.npz?count=-1", "count must be a positive"),
    ("npz:a.npz?count=0", "count must be a positive"),
    ("npz:a.npz?count=10&fraction=0.5", "exclusive"),
    ("npz:a.npz?seed=-2", "seed must be >= 0"),
    ("npz:a.npz?size=0", "size must be a positive"),
    ("npz:a.npz?classes=1,1", "twice"),
    ("npz:a.npz?classes=a,b", "integer"),
    ("npz:a.npz?grayscale=maybe", "true or false"),
    ("nzp:a.npz", r"unknown data kind 'nzp'.*did you mean 'npz'"),
    ("npz:a.npz?path_column=p", "only applies to csv"),
    ("npz:a.npz?skip_corrupt=true", "only applies to image files"),
    ("csv:a.csv?uncertain=maybe", "uncertain=zeros"),
    ("npz:a.npz?split", "has no value"),
    ("npz:a.npz?split=a&split=b", "given twice"),
    ("", "empty data spec"),
])
def test_bad_values(text: str, pattern: str) -> None:
    with pytest.raises(HptError, match=pattern):
        parse_data_spec(text)


def test_mapping_without_path() -> None:
    with pytest.raises(HptError, match="no 'path'"):
        parse_data_spec({"kind": "npz"})


def test_windows_drive_is_not_a_kind() -> None:
    assert parse_data_spec(r"C:\data\x.npz").path == Path(r"C:\data\x.npz")


def test_moved_data_needs_the_same_name_and_options_and_the_old_place_gone(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    gone, here = tmp_path / "old" / "x.npz", tmp_path / "new" / "x.npz"
    here.write_bytes(b"")
    assert moved_data(f"npz:{gone}?split=val", f"npz:{here}?split=val")
    assert not moved_data(f"npz:{gone}?split=val", f"npz:{here}?split=test")  # other options: other data
    assert not moved_data(f"npz:{gone}", f"npz:{tmp_path / 'new' / 'y.npz'}")  # another name
    assert not moved_data(f"npz:{here}", f"npz:{here}")  # not moved at all
    assert not moved_data(f"npz:{here}", f"npz:{tmp_path / 'x.npz'}")  # the old one still exists
    shards = "shard-{000..009}.tar"
    assert moved_data(f"wds:{tmp_path / 'old' / shards}", f"wds:{tmp_path / 'new' / shards}")
    assert not moved_data(f"wds:{tmp_path / 'new' / shards}", f"wds:{tmp_path / shards}")
    assert not moved_data("npz:", f"npz:{here}")  # an unreadable spec is not the same data


def test_a_stage_holds_its_data_as_one_parsed_spec_and_writes_it_back_as_its_string(tmp_path: Path) -> None:
    """Parsed once where the config is read; the object is passed on; YAML and JSON get the canonical string."""
    import yaml

    from hpt.config import from_dict, to_dict
    from hpt.pretrain.config import StageConfig

    given = {"name": "t", "data": {"kind": "npz", "path": "/data/x.npz", "fraction": 0.5}, "steps": 10,
             "stop": {"data": "npz:/data/y.npz?split=val"}}
    stage = from_dict(StageConfig, given)
    assert isinstance(stage.data, DataSpec) and stage.data.fraction == 0.5
    assert stage.stop is not None and isinstance(stage.stop.data, DataSpec) and stage.stop.data.split == "val"
    written = to_dict(stage)
    assert written["data"] == "npz:/data/x.npz?fraction=0.5"
    assert written["stop"]["data"] == "npz:/data/y.npz?split=val"
    again = from_dict(StageConfig, yaml.safe_load(yaml.safe_dump(written)))
    assert again.data == stage.data and again.stop is not None and again.stop.data == stage.stop.data
    assert StageConfig(name="t", data="npz:/data/x.npz?fraction=0.5", steps=10).data == stage.data


@pytest.mark.parametrize("value", [3, None, ["npz:/a.npz"], True])
def test_a_config_value_that_is_not_a_data_spec_is_refused_by_name(value: object) -> None:
    from hpt.config import from_dict
    from hpt.pretrain.config import StageConfig

    with pytest.raises(HptError, match="data"):
        from_dict(StageConfig, {"name": "t", "data": value, "steps": 10})


def test_spec_helpers_keep_everything_but_what_they_change(tmp_path: Path) -> None:
    spec = parse_data_spec("npz:rel/x.npz?split=val&fraction=0.2&seed=4")
    assert spec.resolved(tmp_path).path == (tmp_path / "rel" / "x.npz").resolve()
    assert spec.resolved(tmp_path).seed == 4
    absolute = parse_data_spec("npz:/abs/x.npz")
    assert absolute.resolved(tmp_path) is absolute
    assert spec.train_split() == DataSpec("npz", Path("rel/x.npz"), split="train", fraction=0.2, seed=4)
    assert spec.whole_train_split() == DataSpec("npz", Path("rel/x.npz"), seed=4)
