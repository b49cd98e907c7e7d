"""The report of one study: a small document model rendered as report.md and report.html,
the headline, the narrative, provenance and the cost section.
"""
