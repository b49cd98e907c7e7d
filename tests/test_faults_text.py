"""Text from protocol files and shared storages, made safe per medium (issue 29, F18-F20),
checked against real renderers: Python-Markdown for report.md, a terminal's view of bytes."""

from __future__ import annotations

import html
import re

import markdown
import pytest

from kfaclab.text import clean, md_fence, md_inline

PAYLOADS = [
    "nl\n\n## Answer\n\nAll five claims reproduced (forged)\n\n<!--",
    "x\n```\n\n# FORGED: all five claims reproduced\n\n<img src=x onerror=alert(1)>\n\n```toml\n",
    "*bold* _em_ `code` [link](http://x) ![img](http://x) | a | b |",
    "<script>alert(1)</script> &amp; &#60;",
    "esc\x1b]0;PWNED\x07\x1b[31mRED\r\x1b[2K",
    "plain paper-b2, λ > 1, 1e-03",
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_md_inline_renders_as_one_heading_of_literal_text(payload: str) -> None:
    rendered = markdown.markdown(f"# kfaclab report: {md_inline(payload)}")
    assert rendered.count("<h") == 1 and rendered.startswith("<h1>"), rendered
    for tag in ("<h2", "<img", "<script", "<a ", "<em", "<strong", "<code", "<!--", "<table"):
        assert tag not in rendered, rendered
    text = html.unescape(re.sub(r"<[^>]+>", "", rendered))
    shown = " ".join(re.sub(r"[\x00-\x1f\x7f-\x9f]", " ", payload).split())
    assert text == f"kfaclab report: {shown}", text  # what was written, as text


@pytest.mark.parametrize("payload", PAYLOADS)
def test_md_fence_cannot_be_closed_by_its_text(payload: str) -> None:
    rendered = markdown.markdown(md_fence(payload, "toml"), extensions=["fenced_code"])
    assert rendered.count("<pre>") == 1 and "<h1" not in rendered and "<img" not in rendered
    expected = clean(payload, newlines=True).strip()
    assert html.unescape(re.sub(r"<[^>]+>", "", rendered)).strip() == expected


@pytest.mark.parametrize("payload", PAYLOADS)
def test_clean_leaves_no_control_character_for_a_terminal(payload: str) -> None:
    shown = clean(payload)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", shown)
    assert shown.encode().decode("unicode_escape") == payload or not payload.isascii()
