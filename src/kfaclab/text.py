"""Text from outside (protocol names and descriptions, cell names, stored attributes) made safe
for the medium it is shown in. Each medium has its own rules, so each has its own function:

- ``clean``: a terminal. C0/C1 control characters (ESC sequences set the window title, colours,
  erase lines; CR overwrites what came before) are shown as ``\\x1b``-style escapes instead.
- ``md_inline``: one line of Markdown (a heading, a list item, a table cell). Newlines become
  spaces, so a name cannot start a heading or a block of its own; inline syntax (emphasis,
  code, links) is backslash-escaped, ``<`` becomes ``&lt;`` so no raw HTML passes,
  and the rest stays readable as plain text ("λ > 1", "paper-b2").
- ``md_fence``: a block shown verbatim (a TOML listing). The fence is longer than any run of
  backticks in the text, so the text cannot close it.

CSV cells are neutralised where they are written (study/export.py ``neutralise``).
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, and C1 controls (U+0080–U+009F: 8-bit CSI and OSC).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_CONTROL_ALL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Inside a line (after "# " or "- "), only inline syntax can act: emphasis, code, links and
# images, and backslash itself. "#", ">", "-" and digits only act at the start of a line, which a
# one-line text never reaches. A table cell also needs its "|" escaped (its writer does that).
_MD_SPECIAL = re.compile(r"([\\`*_\[\]])")


def clean(text: str, *, newlines: bool = False) -> str:
    """``text`` safe to print on a terminal: control characters written as escapes (``\\x1b``),
    tabs and (with ``newlines``) line breaks kept."""
    pattern = _CONTROL if newlines else _CONTROL_ALL

    def escape(m: re.Match[str]) -> str:
        return m.group().encode("unicode_escape").decode("ascii")

    return pattern.sub(escape, text)


def md_inline(text: str) -> str:
    """``text`` as literal inline Markdown on one line (see the module docstring)."""
    one_line = " ".join(_CONTROL_ALL.sub(" ", text).split())
    escaped = _MD_SPECIAL.sub(r"\\\1", one_line)
    return re.sub(r"&(?=#?\w+;)", "&amp;", escaped).replace("<", "&lt;")


def md_fence(text: str, info: str = "") -> str:
    """``text`` in a fenced code block it cannot close (see the module docstring), its control
    characters but tab and newline shown as escapes (a report.md is read on terminals too)."""
    text = clean(text, newlines=True)
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text.rstrip(chr(10))}\n{fence}"
