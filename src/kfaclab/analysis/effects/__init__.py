"""Factorial designs' effects: responses per run, the OLS effects model, the half-normal plot.

kfaclab.analysis.effects.report writes what `kfaclab effects DIR` shows.
"""
