"""OUT/report.html: the report on one self-contained page - the same tables, notes and published references as
report.md, its figures embedded as data URIs, and the run's settings (what was evaluated, how, and each variant's
stages). No script, no external style sheet, font or image: the page opens offline, and its Content-Security-Policy
forbids loading anything from elsewhere.

The page is rendered from report.md's text, which uses a small, fixed subset of Markdown (headings, pipe tables,
bullet lists, quoted lines, image lines, **bold** and `code`), so the two never disagree.
"""

from __future__ import annotations

import base64
import json
import re
from html import escape
from pathlib import Path
from typing import Any

from hpt.atomic import atomic_write_text
from hpt.report.noise import label

__all__ = ["markdown_to_html", "page", "run_settings", "write_html"]

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
th { background: #f2f2f4; } tbody tr:nth-child(even) { background: #fafafa; }
tr.published td { font-style: italic; background: #fff8e6; }
p.published { border-left: 4px solid #e0a800; background: #fff8e6; padding: 0.4rem 0.7rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.8rem; color: #666; }
code { background: #f2f2f4; padding: 0 0.2rem; border-radius: 3px; }
dl.settings dt { font-weight: 600; margin-top: 0.5rem; } dl.settings dd { margin-left: 1rem; font-family: monospace; }
"""
# Nothing may be fetched: images only from data: URIs, styles only from this page.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
PUBLISHED_PREFIX = "Published supervised reference"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def write_html(out: Path, markdown: str, rows: dict[str, list[dict[str, Any]]]) -> Path:
    """Write OUT/report.html from report.md's text and the experiments' rows (for the settings); returns its path."""
    title = next((line[2:].strip() for line in markdown.splitlines() if line.startswith("# ")), out.name)
    body = markdown_to_html(markdown, out) + settings_html(run_settings(out, rows))
    path = out / "report.html"
    atomic_write_text(path, page(title, body))
    return path


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def inline(text: str) -> str:
    """Escape text, then render **bold** and `code`."""
    text = escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def markdown_to_html(markdown: str, out: Path) -> str:
    """The report's Markdown subset as HTML; image lines become figures embedded from files under `out`.

    A quoted line that names a published reference becomes the last, marked row of its section's tables."""
    parts: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                block.append(lines[i].strip())
                i += 1
            parts.append(_table(block))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{inline(lines[i].strip()[2:])}</li>")
                i += 1
            parts.append("<ul>\n" + "\n".join(items) + "\n</ul>")
        else:
            parts.append(_block(line, out))
            i += 1
    return "\n".join(_reference_rows(parts)) + "\n"


def _block(line: str, out: Path) -> str:
    heading = re.match(r"(#{1,4}) (.*)", line)
    if heading:
        level = len(heading.group(1))
        return f"<h{level}>{inline(heading.group(2))}</h{level}>"
    if line.startswith("> "):
        css = ' class="published"' if line[2:].startswith(PUBLISHED_PREFIX) else ""
        return f"<p{css}>{inline(line[2:])}</p>"
    image = _IMAGE.fullmatch(line)
    if image:
        return _figure(image.group(1), image.group(2), out)
    return f"<p>{inline(line)}</p>"


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip()[1:-1].split("|")]


def _table(block: list[str]) -> str:
    header, body = _cells(block[0]), [r for r in block[1:] if not re.fullmatch(r"\|[\s|:-]*\|", r)]
    head = "".join(f"<th>{inline(cell)}</th>" for cell in header)
    rows = ["<tr>" + "".join(f"<td>{inline(cell)}</td>" for cell in _cells(r)) + "</tr>" for r in body]
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def _reference_rows(parts: list[str]) -> list[str]:
    """Move each published reference into the tables of its section, as their last, marked row (a section without a
    table keeps the line)."""
    result = list(parts)
    for at, part in enumerate(parts):
        if not part.startswith('<p class="published">'):
            continue
        text = part[len('<p class="published">'):-len("</p>")]
        start = max((j for j in range(at) if parts[j].startswith("<h")), default=-1)
        for j in range(start + 1, at):
            if result[j].startswith("<table>"):
                width = result[j].split("</thead>")[0].count("<th>")
                row = f'<tr class="published"><td colspan="{width}">{text}</td></tr>'
                result[j] = result[j].replace("\n</tbody>", f"\n{row}\n</tbody>")
                result[at] = ""
    return [part for part in result if part]


def _figure(alt: str, source: str, out: Path) -> str:
    """An image file under `out` as an embedded figure; a missing one is said, not linked."""
    path = (out / source).resolve()
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file() or not path.is_relative_to(out.resolve()):
        return f"<p><em>figure {escape(source)} is missing</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(source)}</figcaption></figure>")


def run_settings(out: Path, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the rows were made with: the evaluation data and each protocol's settings (from the first evaluation
    record of that protocol), and each variant's start and stages."""
    evaluation: dict[str, dict[str, Any]] = {}
    data = None
    variants: dict[tuple[str, str, str], dict[str, Any]] = {}
    for kind, group in rows.items():
        for row in group:
            key = (label(row), str(row.get("start", "")), str(row.get("stages", "")))
            variants.setdefault(key, {"experiment": kind, "variant": key[0], "start": key[1], "stages": key[2],
                                      "pretrain_seed": row.get("pretrain_seed")})
            protocol = row.get("protocol")
            if protocol in evaluation or not row.get("eval_dir"):
                continue
            record = _record(out / row["eval_dir"] / protocol / "results.json")
            if record is not None:
                evaluation[protocol] = record.get("suite_settings") or record.get("settings") or {}
                data = data or record.get("data")
    return {"data": data, "evaluation": evaluation, "variants": list(variants.values())}


def _record(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def settings_html(settings: dict[str, Any]) -> str:
    parts = ["<h2>Settings</h2>"]
    if settings["data"]:
        parts.append(f"<p>Evaluation data: <code>{escape(str(settings['data']))}</code></p>")
    if settings["evaluation"]:
        items = []
        for protocol, values in settings["evaluation"].items():
            text = ", ".join(f"{key}={_value(value)}" for key, value in sorted(values.items()) if key != "data")
            items.append(f"<dt>{escape(protocol)}</dt><dd>{escape(text)}</dd>")
        parts.append('<dl class="settings">\n' + "\n".join(items) + "\n</dl>")
    else:
        parts.append("<p>No evaluation record was found under this folder: the evaluation settings are unknown.</p>")
    if settings["variants"]:
        rows = [f"<tr><td>{escape(v['experiment'])}</td><td>{escape(v['variant'])}</td><td>{escape(v['start'])}</td>"
                f"<td>{escape(v['stages'])}</td><td>{escape(_value(v['pretrain_seed']))}</td></tr>"
                for v in settings["variants"]]
        parts.append("<table>\n<thead><tr><th>experiment</th><th>variant</th><th>start</th><th>stages</th>"
                     "<th>pretraining seed</th></tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>")
    return "\n".join(parts) + "\n"


def _value(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)
