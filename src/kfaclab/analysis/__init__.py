"""Summaries of a stored study as plain data, figures drawn from them, and the report.

``summarize(study) -> StudySummary`` computes; ``kfaclab.analysis.figures`` draws;
``kfaclab.analysis.report.build_report`` writes report.html and report.md.
"""

from kfaclab.analysis.cells import CellSummary
from kfaclab.analysis.summaries import StudySummary, summarize

__all__ = ["CellSummary", "StudySummary", "summarize"]
