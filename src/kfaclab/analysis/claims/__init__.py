"""The paper's five claims as data: verdicts from a study's summary, their storage (claims.json)
and the claims of runs kept only as a report.
"""
