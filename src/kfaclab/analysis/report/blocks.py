"""A tiny document model rendered twice: report.md (figures linked) and report.html (figures
embedded as base64 PNG, so the one file is the whole report). Writing the content once keeps the
two from drifting apart."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

from kfaclab.text import md_fence, md_inline


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str
    kind: str = ""  # "" | "warning" | "note": drawn as a callout in HTML, a quote in Markdown


@dataclass
class Bullets:
    items: list[str]
    kind: str = ""  # "" | "warning": a warning list is drawn like a warning callout


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    highlight: int | None = None  # index of the row to emphasise (the best cell)


@dataclass
class Toc:
    """A table of contents of the level-2 headings that follow it."""


@dataclass
class Image:
    png: Path
    svg: Path
    title: str
    reading: str  # the one-paragraph reading generated from the numbers


@dataclass
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Image | Code | Toc


def anchor(text: str) -> str:
    """GitHub's heading slug (lower case, punctuation dropped, spaces to '-'); the HTML uses the
    same ids so one TOC works in both."""
    kept = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def md_escape(text: str) -> str:
    """Text safe in Markdown: no raw HTML (a protocol name is user input). Only what starts a tag
    or an entity is escaped, so a plain-text reader still sees "λ > 1" as written."""
    return re.sub(r"&(?=#?\w+;)", "&amp;", text).replace("<", "&lt;")


def to_markdown(blocks: list[Block], base: Path) -> str:
    out: list[str] = []
    for i, b in enumerate(blocks):
        if isinstance(b, Heading):
            # user text (a protocol's name) must not forge headings or links: inline-escaped
            out.append(f"{'#' * b.level} {md_inline(b.text)}")
        elif isinstance(b, Toc):
            heads = [h.text for h in blocks[i + 1 :] if isinstance(h, Heading) and h.level == 2]
            out.append("\n".join(f"- [{md_inline(h)}](#{anchor(h)})" for h in heads))
        elif isinstance(b, Para):
            out.append(
                f"> **{b.kind.capitalize()}:** {md_escape(b.text)}" if b.kind else md_escape(b.text)
            )
        elif isinstance(b, Bullets):
            mark = "> " if b.kind else ""
            out.append("\n".join(f"{mark}- {md_escape(x)}" for x in b.items))
        elif isinstance(b, Table):
            rows = [b.header, ["---"] * len(b.header), *b.rows]
            lines = []
            for k, r in enumerate(rows):
                cells = [md_escape(c).replace("|", "\\|") for c in r]
                if b.highlight is not None and k == b.highlight + 2:
                    cells = [f"**{c}**" if c else c for c in cells]
                lines.append("| " + " | ".join(cells) + " |")
            text = "\n".join(lines)
            out.append(f"{text}\n\n*{md_escape(b.caption)}*" if b.caption else text)
        elif isinstance(b, Image):
            png, svg = b.png.relative_to(base).as_posix(), b.svg.relative_to(base).as_posix()
            t = md_escape(b.title)
            out.append(f"![{t}]({png})\n\n*{t}* ([SVG]({svg})). {md_escape(b.reading)}")
        elif isinstance(b, Code):
            out.append(md_fence(b.text, "toml"))  # a fence the text cannot close
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:68rem;margin:2rem auto;
padding:0 1rem;line-height:1.5;color:#1a1a1a}
h1{font-size:1.6rem}h2{font-size:1.3rem;border-bottom:1px solid #ddd;margin-top:2rem}
h3{font-size:1.1rem}table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
td,th{border:1px solid #ccc;padding:.2rem .45rem;text-align:right}td{white-space:nowrap}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9rem;color:#333}.warning{background:#fff4e5;border-left:4px solid #e69f00;
padding:.4rem .8rem}.note{background:#eef6fb;border-left:4px solid #0072b2;padding:.4rem .8rem}
pre{background:#f6f6f6;padding:.6rem;overflow-x:auto;font-size:.8rem}caption{caption-side:bottom;
font-size:.8rem;color:#555;text-align:left}.scroll{overflow-x:auto;max-width:100%}
tr.best td{background:#e8f4ea;font-weight:600}ul.warning{list-style-position:inside;margin:.5rem 0}
ul.warning li{margin:.15rem 0}nav.toc{background:#f7f7f7;padding:.4rem 1rem;font-size:.9rem}
nav.toc ul{margin:.2rem 0;padding-left:1.2rem}td.text,th.text{text-align:left;white-space:normal}
td.wrap{white-space:normal;min-width:14rem}.verdict-reproduced{color:#006d2c;font-weight:600}
.verdict-not{color:#b30000;font-weight:600}.verdict-inconclusive{color:#8a5a00;font-weight:600}
"""


def to_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for i, b in enumerate(blocks):
        if isinstance(b, Heading):
            out.append(f'<h{b.level} id="{anchor(b.text)}">{e(b.text)}</h{b.level}>')
        elif isinstance(b, Toc):
            heads = [h.text for h in blocks[i + 1 :] if isinstance(h, Heading) and h.level == 2]
            items = "".join(f'<li><a href="#{anchor(h)}">{e(h)}</a></li>' for h in heads)
            out.append(f'<nav class="toc"><b>Contents</b><ul>{items}</ul></nav>')
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            cls = f' class="{b.kind}"' if b.kind else ""
            out.append(f"<ul{cls}>" + "".join(f"<li>{e(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append(_html_table(b))
        elif isinstance(b, Image):
            data = base64.b64encode(b.png.read_bytes()).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.title)}">'
                f"<figcaption><b>{e(b.title)}.</b> {e(b.reading)}</figcaption></figure>"
            )
        elif isinstance(b, Code):
            out.append(f"<pre>{e(b.text)}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


_VERDICT_CLASSES = (
    ("not reproduced", "not"),
    ("reproduced", "reproduced"),
    ("inconclusive", "inconclusive"),
)


def _is_number(cell: str) -> bool:
    """A cell that reads as a number, interval or count ("0.636 ± 0.314", "[0.57, 0.70]", "42%",
    "300/300", "–"): right-aligned so digits line up; anything else is text, left-aligned."""
    return bool(_NUMBER_CELL.fullmatch(cell.strip()))


_NUMBER_CELL = re.compile(r"[-−+]?[\d.]+(e[-+]?\d+)?( ?[±×/%] ?[\d.e+\-−]*)*%?|\[[^\]]*\]|–")


def _html_table(b: Table) -> str:
    e = html.escape
    text_columns = {
        j
        for j in range(len(b.header))
        if any(j < len(r) and r[j].strip() and not _is_number(r[j]) for r in b.rows)
    }

    def header(j: int, h: str) -> str:
        return f'<th class="text">{e(h)}</th>' if j in text_columns else f"<th>{e(h)}</th>"

    head = "".join(header(j, h) for j, h in enumerate(b.header))

    def cell(j: int, c: str) -> str:
        classes = ["text"] if j in text_columns else []
        if len(c) > 40:
            classes.append("wrap")  # long text (the claims) wraps; numbers don't
        for verdict, name in _VERDICT_CLASSES:
            if c.startswith(verdict):
                classes.append(f"verdict-{name}")
                break
        cls = f' class="{" ".join(classes)}"' if classes else ""
        return f"<td{cls}>{e(c)}</td>"

    body = "".join(
        ('<tr class="best">' if k == b.highlight else "<tr>")
        + "".join(cell(j, c) for j, c in enumerate(r))
        + "</tr>"
        for k, r in enumerate(b.rows)
    )
    cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
    return (
        f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )
