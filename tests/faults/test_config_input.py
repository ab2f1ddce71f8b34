"""Config files as users write them: numbers in exponent form, files in another encoding, broken YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpt.config import from_dict, load_yaml
from hpt.errors import HptError
from hpt.experiments.config import load_experiment
from hpt.pretrain.config import StageConfig
from hpt.pretrain.hierarchy import load_hierarchy

from ..helpers import TINY_BASE, TINY_STAGE, run_cli, write_hierarchy


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("3E-4", 3e-4), ("1e5", 1e5), ("-2.5e+2", -250.0),
                                              (".5e-1", 0.05), ("7", 7.0)])
def test_a_number_yaml_reads_as_a_string_is_taken_for_a_float_setting(tiny_npz: Path, text: str,
                                                                      value: float) -> None:
    parsed = yaml.safe_load(f"lr: {text}")["lr"]
    config = from_dict(StageConfig, {"name": "s", "data": f"npz:{tiny_npz}", "steps": 4, "lr": parsed,
                                     "augment": {"crop_scale": ["2e-1", "1E0"]}})
    assert config.lr == pytest.approx(value) and isinstance(config.lr, float)
    assert config.augment.crop_scale == pytest.approx((0.2, 1.0))


@pytest.mark.parametrize("text", ["fast", "1e", "e5", "1e-3x", "nan", "inf", "0x10", ""])
def test_a_string_that_is_not_a_number_is_still_refused(tiny_npz: Path, text: str) -> None:
    with pytest.raises(HptError, match="lr must be a number"):
        from_dict(StageConfig, {"name": "s", "data": f"npz:{tiny_npz}", "steps": 4, "lr": text})


def test_an_integer_setting_still_wants_an_integer(tiny_npz: Path) -> None:
    with pytest.raises(HptError, match="steps must be an integer"):
        from_dict(StageConfig, {"name": "s", "data": f"npz:{tiny_npz}", "steps": "1e3"})


def test_exponent_numbers_in_hierarchy_and_experiment_files(tiny_npz: Path, tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(f"base: {{checkpoint: random}}\nstages:\n  - {{name: t, data: 'npz:{tiny_npz}', steps: 2, "
                    "lr: 1e-3, weight_decay: 5E-4, anchor: {weight: 1e1}}\n")
    stage = load_hierarchy(path).stages[0]
    assert (stage.lr, stage.weight_decay, stage.anchor.weight) == pytest.approx((1e-3, 5e-4, 10.0))
    assert load_hierarchy(path, ["stages.t.lr=2e-3"]).stages[0].lr == pytest.approx(2e-3)
    path = tmp_path / "experiment.yaml"
    path.write_text(f"target: 'npz:{tiny_npz}'\nbudgets: {{hpt_lr: 1e-3, hpt_bn_lr: 3e-2}}\nfractions: [1e-1, 1]\n")
    experiment = load_experiment(path)
    assert (experiment.budgets.hpt_lr, experiment.budgets.hpt_bn_lr) == pytest.approx((1e-3, 3e-2))
    assert experiment.fractions == pytest.approx([0.1, 1.0])


def test_hpt_run_trains_with_an_exponent_lr(tiny_npz: Path, tmp_path: Path) -> None:
    config = write_hierarchy(tmp_path / "run.yaml", [{"name": "t", "data": f"npz:{tiny_npz}", "steps": 2}])
    config.write_text(config.read_text().replace("steps: 2", "steps: 2\n  lr: 1e-3"))
    result = run_cli("run", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert yaml.safe_load((tmp_path / "out" / "t" / "config.yaml").read_text())["lr"] == pytest.approx(1e-3)


LATIN1 = "base: {checkpoint: random}\n# r\u00e9sum\u00e9 of the run\nstages: []\n".encode("latin-1")


def test_a_file_that_is_not_utf8_is_a_user_error_naming_the_file_line_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes(LATIN1)
    with pytest.raises(HptError) as err:
        load_yaml(path)
    message = str(err.value)
    assert str(path) in message and "not UTF-8" in message and "line 2" in message and "iconv" in message
    assert "\n" not in message


def test_a_utf8_file_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffname: caf\u00e9\n".encode())
    assert load_yaml(path) == {"name": "caf\u00e9"}


@pytest.mark.parametrize(("text", "line"), [("stages:\n  - {name: t, data: [\n", "line 3"),
                                            ("a: 1\n\tb: 2\n", "line 2"), ("a: [1, 2\nb: 3\n", "line 2"),
                                            ('a: "x\n', "line 2")])
def test_broken_yaml_is_a_one_line_user_error_with_its_place(tmp_path: Path, text: str, line: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(HptError) as err:
        load_yaml(path)
    message = str(err.value)
    assert message.startswith(f"{path} is not valid YAML: {line}") and "\n" not in message


def test_the_command_line_reports_encoding_and_syntax_errors_with_exit_2(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(LATIN1)
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"base": TINY_BASE, "defaults": TINY_STAGE}) + "stages: [\n")
    for args, expected in ((["run", str(latin)], "is not UTF-8"), (["experiment", "compare", str(latin)], "UTF-8"),
                           (["run", str(broken)], "is not valid YAML: line")):
        result = run_cli(*args, "--out", str(tmp_path / "out"))
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.stderr
        assert expected in lines[0] and str(tmp_path) in lines[0] and "Traceback" not in result.stderr
