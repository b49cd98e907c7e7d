"""A tiny document model rendered twice: report.md (figures linked) and report.html (figures
embedded as base64 PNG, so the one file is the whole report). Writing the content once keeps the
two from drifting apart."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


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


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    png: Path
    svg: Path
    title: str
    reading: str  # the one-paragraph reading generated from the numbers


@dataclass
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Image | Code


def to_markdown(blocks: list[Block], base: Path) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(f"> **{b.kind.capitalize()}:** {b.text}" if b.kind else b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {x}" for x in b.items))
        elif isinstance(b, Table):
            rows = [b.header, ["---"] * len(b.header), *b.rows]
            text = "\n".join(
                "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows
            )
            out.append(f"{text}\n\n*{b.caption}*" if b.caption else text)
        elif isinstance(b, Image):
            png, svg = b.png.relative_to(base).as_posix(), b.svg.relative_to(base).as_posix()
            out.append(f"![{b.title}]({png})\n\n*{b.title}* ([SVG]({svg})). {b.reading}")
        elif isinstance(b, Code):
            out.append(f"```toml\n{b.text.rstrip()}\n```")
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
font-size:.8rem;color:#555;text-align:left}
"""


def to_html(blocks: list[Block], title: str) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            cls = f' class="{b.kind}"' if b.kind else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows
            )
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
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
