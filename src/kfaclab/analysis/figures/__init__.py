"""Figures drawn from a StudySummary, in one style (print fonts, one λ palette)."""
