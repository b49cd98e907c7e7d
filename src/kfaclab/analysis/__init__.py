"""What kfaclab computes from stored studies, by concern:

- ``summary``: a stored study as plain data (``summarize(study) -> StudySummary``);
- ``statistics``: intervals, what the search found, whether a range binds;
- ``replication``: paired reruns on new seeds and pooled replications, the evidence verdicts use;
- ``claims``: the paper's five claims as verdicts, and their storage;
- ``effects``: factorial designs' effects with intervals;
- ``figures`` and ``report``: the figures and report.md/report.html of one study;
- ``findings``: docs/results/FINDINGS.md and ``kfaclab claims`` across runs.
"""

from kfaclab.analysis.summary.cells import CellSummary
from kfaclab.analysis.summary.summaries import StudySummary, summarize

__all__ = ["CellSummary", "StudySummary", "summarize"]
