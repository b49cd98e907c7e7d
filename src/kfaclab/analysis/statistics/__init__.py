"""Statistics of one stored study: intervals (on scipy.stats), what the search found and
whether a range the protocol chose binds the answer.
"""
