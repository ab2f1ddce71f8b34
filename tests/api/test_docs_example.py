"""docs/api.md runs as written: its python blocks, in order, on a tiny npz this test writes, at a tiny size.

Only the settings in SCALED_DOWN change (each must still be in the page, so that an edit of the page shows here).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..conftest import write_npz

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"
#: Text of the page -> what runs instead: a few steps instead of hundreds (each must occur in the page).
SCALED_DOWN = {
    "steps=500, out=": "steps=2, out=",
    "batch_size=128)": "batch_size=16)",
    '"linear", out=': '"linear", steps=20, eval_every=10, out=',
}


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def test_the_page_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = python_blocks(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 5, "docs/api.md lost its python blocks"
    code = "\n".join(blocks)
    for text, tiny in SCALED_DOWN.items():
        assert text in code, f"docs/api.md no longer has {text!r}: update SCALED_DOWN"
        code = code.replace(text, tiny)
    monkeypatch.chdir(tmp_path)
    write_npz(tmp_path / "my_images.npz", size=32)
    namespace: dict[str, object] = {"__name__": "docs_api"}
    exec(compile(code, str(PAGE), "exec"), namespace)  # noqa: S102 - the page's own code
    out = capsys.readouterr().out
    assert "target: done" in out and "| Base |" in out and "| HPT |" in out
    assert "no such file or named weights: no_such_file.safetensors" in out
    run, comparison = namespace["run"], namespace["comparison"]
    assert run.steps == {"target": 2} and run.backbone_path.is_file()  # type: ignore[attr-defined]
    assert [row.name for row in comparison.rows] == ["Base", "HPT"]  # type: ignore[attr-defined]
    assert Path(namespace["for_timm"].path).is_file()  # type: ignore[attr-defined]
    assert tuple(namespace["features"].shape) == (8, 128)  # type: ignore[attr-defined]
