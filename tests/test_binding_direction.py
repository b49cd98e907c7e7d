"""Binding sees a flat direction as flat, and sees the damping strategies' own constants.

Synthetic searches with a known loss surface: a loss that keeps falling toward lr's upper bound
(the optimum may lie past it: binds) and one that is flat there (lr under a KL clip: a larger lr
changes nothing, so the bound decides nothing).
"""

from __future__ import annotations

import math

import numpy as np

from kfaclab.analysis.statistics.binding import cell_bindings
from kfaclab.analysis.statistics.search import Range, cell_ranges, edge_warnings
from kfaclab.analysis.summary.cells import summarize_cell
from kfaclab.study.cells import CellInfo
from kfaclab.study.reader import StoredTrial

RANGE = Range("lr", 1e-4, 1.0, True)


def _trials(loss_of_lr, n=120, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lr = 10 ** rng.uniform(-4, 0)
        v = loss_of_lr(lr) * math.exp(rng.normal(0, 0.02))
        out.append(StoredTrial("c", i, "COMPLETE", "ok", v, {"lr": lr}, 1.0))
    return out


def _cell(damping=1e-2, label="1e-02"):
    return CellInfo("c", "kfac", damping, label, 120, 20)


def test_loss_falling_toward_the_bound_binds():
    trials = _trials(lambda lr: 1.0 / (1.0 + 10 * lr))  # still improving at lr = 1
    cell = summarize_cell(_cell(), trials)
    found = cell_bindings(cell, trials, [RANGE])
    assert [(b.param, b.edge) for b in found] == [("lr", "high")]


def test_flat_direction_at_the_bound_does_not_bind():
    # below lr = 1e-2 the loss falls with lr; above it a clip makes lr irrelevant (flat)
    trials = _trials(lambda lr: 1.0 / (1.0 + 10 * min(lr, 1e-2)))
    cell = summarize_cell(_cell(), trials)
    # the best trial may well sit at the bound: the top-k is spread over the flat plateau
    assert cell_bindings(cell, trials, [RANGE]) == []


def test_an_edge_warning_says_flat_where_the_binding_rule_clears_the_edge():
    flat = _trials(lambda lr: 1.0 / (1.0 + 10 * min(lr, 1e-2)))
    falling = _trials(lambda lr: 1.0 / (1.0 + 10 * lr))
    for trials, is_flat in ((flat, True), (falling, False)):
        cell = summarize_cell(_cell(), trials)
        warned = edge_warnings([cell], {"c": trials}, lambda c: [RANGE], margin=0.5)
        assert [w.flat for w in warned] == [is_flat]
        assert ("flat toward it" in warned[0].sentence()) is is_flat
        assert ("may lie outside" in warned[0].sentence()) is not is_flat


def test_strategy_constants_are_checked_like_lr():
    protocol = {
        "search": {"lr": {"low": 1e-4, "high": 1.0, "log": True}},
        "cells": {
            "strategies": [
                {
                    "name": "lm_same",
                    "kind": "levenberg_marquardt",
                    "search": {"initial": {"low": 1e-4, "high": 1e2, "log": True}},
                },
            ]
        },
    }
    info = CellInfo("c", "kfac", {"kind": "levenberg_marquardt"}, "lm_same", 120, 20)
    rng = np.random.default_rng(1)
    trials = []
    for i in range(120):
        init = 10 ** rng.uniform(-4, 2)
        v = 1.0 / (1.0 + init) * math.exp(rng.normal(0, 0.02))  # better as initial grows
        trials.append(
            StoredTrial("c", i, "COMPLETE", "ok", v, {"lr": 0.1, "damping.initial": init}, 1.0)
        )
    cell = summarize_cell(info, trials)
    ranges = cell_ranges(protocol, cell)
    assert "damping.initial" in [r.name for r in ranges]
    found = cell_bindings(cell, trials, ranges)
    assert ("damping.initial", "high") in [(b.param, b.edge) for b in found]
