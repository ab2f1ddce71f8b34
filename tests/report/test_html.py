"""report.html: the report on one self-contained page - checked as text, and opened in a real headless browser."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from hpt.experiments import load_experiment, run_experiment
from hpt.models import build_resnet, save_backbone
from hpt.report import build_report, read_rows
from hpt.report.html import markdown_to_html, write_html

from ..conftest import write_npz
from ..helpers import TINY_STAGE, call
from .test_choices import compare_rows, convergence_rows, write_rows

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def test_text_is_escaped_and_the_page_loads_nothing_from_elsewhere(tmp_path: Path) -> None:
    rows = compare_rows()
    rows[3] = {**rows[3], "variant": "HPT <b>&</b>", "series": "HPT <b>&</b>"}
    write_rows(tmp_path, "compare", rows)
    write_rows(tmp_path, "convergence", convergence_rows())
    build_report(tmp_path, title='A <script>alert("x")</script> & co', html=True)
    page = (tmp_path / "report.html").read_text()
    assert "<title>A &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co</title>" in page
    assert "<h1>A &lt;script&gt;alert(\"x\")&lt;/script&gt; &amp; co</h1>" in page
    assert "<td>HPT &lt;b&gt;&amp;&lt;/b&gt;</td>" in page and "<b>&</b>" not in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "@import" not in page
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//)""", page, flags=re.IGNORECASE)
    sources = re.findall(r'<img src="([^"]+)"', page)
    # compare's bars and convergence's lines (no separability curves: these rows have no curve.csv)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "default-src 'none'; img-src data:" in page  # the browser itself refuses anything else
    assert page.count("<table>") == 3  # compare, convergence and the settings
    assert "<strong>linear</strong>" in page and "Steps to parity" in page


def test_a_missing_figure_is_said_and_published_references_become_a_marked_row(tmp_path: Path) -> None:
    markdown = ("# t\n## Section\n| variant | score |\n|---|---|\n| HPT | 80.0 [79.0, 81.0] |\n\n"
                "> Published supervised reference, not comparable protocol: X (Y).\n\n"
                "![gone](figures/gone.png)\n![outside](../secret.png)")
    body = markdown_to_html(markdown, tmp_path)
    assert '<tr class="published"><td colspan="2">Published supervised reference' in body
    assert '<p class="published">' not in body  # moved into the table, not said twice
    alone = markdown_to_html("## Section\n\n> Published supervised reference, not comparable protocol: X (Y).", tmp_path)
    assert '<p class="published">Published supervised reference' in alone  # no table to hold it: the line stays
    assert "figure figures/gone.png is missing" in body and "figure ../secret.png is missing" in body
    assert "<img" not in body


def test_settings_name_the_evaluation_and_each_variants_stages(tmp_path: Path) -> None:
    rows = compare_rows()
    for row in rows:
        folder = tmp_path / row["eval_dir"] / row["protocol"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps({"data": "npz:/d/breastmnist.npz", "suite_settings": {
            "data": "npz:/d/breastmnist.npz", "steps": 5000, "lr": 30.0, "milestones": [2, 4]}}))
    write_rows(tmp_path, "compare", rows)
    page = write_html(tmp_path, "# t\n", read_rows(tmp_path)).read_text()
    assert "Evaluation data: <code>npz:/d/breastmnist.npz</code>" in page
    assert "<dt>linear</dt><dd>lr=30.0, milestones=[2, 4], steps=5000</dd>" in page
    assert "<td>compare</td><td>HPT</td><td>x</td><td>s</td><td>0</td>" in page


@pytest.fixture
def tiny_experiment(tmp_path: Path) -> Path:
    """A finished compare experiment on a file named like PneumoniaMNIST, and convergence rows whose HPT stage's
    guard kept an earlier step."""
    write_npz(tmp_path / "pneumoniamnist_28.npz", n_train=48, seed=2)
    save_backbone(build_resnet("resnet18", small_stem=True, width=8), tmp_path / "base.safetensors")
    raw = {"name": "tiny", "target": "npz:pneumoniamnist_28.npz", "out": "out",
           "base": {"checkpoint": "base.safetensors"}, "defaults": TINY_STAGE,
           "budgets": {"hpt": 2, "hpt_bn": 2, "target": 3, "source": 2, "bn_stats": 2},
           "eval": {"protocols": ["linear"], "linear": {"steps": 6, "eval_every": 3}, "device": "cpu"}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    run_experiment("compare", load_experiment(tmp_path / "experiment.yaml"), out)
    guard = {"signal": "knn", "kept_step": 300, "kept_value": 0.831, "reason": "knn fell after step 300",
             "rolled_back": True}
    points = [{**r, "guard": guard} if r["series"] == "HPT" and r["x"] == 50 else r for r in convergence_rows()]
    write_rows(out, "convergence", points)
    return out


def browser() -> Any:
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.skip(f"no headless browser: {CHROMIUM} and {CHROMEDRIVER} are needed "
                    "(apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[dev])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)  # with the driver's path below, selenium-manager downloads nothing
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    return webdriver, options, Service(str(CHROMEDRIVER))


def test_the_page_opens_in_a_headless_browser_with_every_table_and_figure(
        tiny_experiment: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = call(capsys, "report", str(tiny_experiment), "--html", "--title", "Tiny <report>")
    assert code == 0 and stdout.splitlines() == [str(tiny_experiment / name) for name in ("report.md", "report.html")]
    markdown = (tiny_experiment / "report.md").read_text()
    assert "> Published supervised reference, not comparable protocol: ResNet-18 at 28 px on PneumoniaMNIST" in markdown
    expected = [len(block.splitlines()) - 2 for block in re.findall(r"(?:^\|.*\|\n)+", markdown, flags=re.MULTILINE)]
    assert len(expected) == 2  # compare and convergence

    webdriver, options, service = browser()
    profile = tmp_path / "profile"
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get((tiny_experiment / "report.html").as_uri())
        assert driver.title == "Tiny <report>"
        tables = driver.find_elements("css selector", "table")
        assert len(tables) == len(expected) + 1  # and the settings' table
        marked = []
        for table, rows in zip(tables, expected, strict=False):
            published = table.find_elements("css selector", "tbody tr.published")
            assert len(table.find_elements("css selector", "tbody tr")) == rows + len(published)
            marked.append([row.text for row in published])
        # compare's evaluations name their data; the convergence rows written by hand point to no record
        assert len(marked[0]) == 1 and "PneumoniaMNIST" in marked[0][0] and "MedMNIST v2" in marked[0][0]
        assert marked[1] == []
        first = tables[0].find_elements("css selector", "tbody tr td:first-child")
        assert [cell.text for cell in first][:5] == ["Random", "Base", "Target", "HPT", "HPT-BN"]
        assert "the guard kept step 300 (knn 0.831): knn fell after step 300" in driver.page_source
        settings = tables[-1].text
        assert "target(all, 3 steps)" in settings and "pneumoniamnist_28.npz" in driver.page_source
        images = driver.find_elements("css selector", "img")
        assert len(images) == len(list((tiny_experiment / "figures").glob("*.png"))) >= 3
        widths = driver.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0);")
        assert all(width > 0 for width in widths), widths
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
