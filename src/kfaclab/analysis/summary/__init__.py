"""A stored study as plain data: cells and their top-k, reruns of the best, gradients,
curvature, the adaptive ranking and what the study cost. No drawing, no verdicts.
"""
