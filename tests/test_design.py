"""The design generator against the textbook: Montgomery, Design and Analysis of Experiments,
the appendix table of selected 2^(k−p) fractions, 2^(7−3)_IV with E = ABC, F = BCD, G = ACD
(16 runs), and a brute-force oracle (two effects are aliased iff their ±1 columns are equal)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kfaclab.errors import UsageError
from kfaclab.study.design import (
    TwoLevelDesign,
    full_factorial,
    parse_generator,
    word_name,
    word_order,
)

NAMES = list("ABCDEFG")
# The textbook's defining relation and its seven alias chains of two-factor interactions.
RELATION = {"ABCE", "BCDF", "ACDG", "ADEF", "BDEG", "ABFG", "CEFG"}
CHAINS = [
    {"AB", "CE", "FG"},
    {"AC", "BE", "DG"},
    {"AD", "CG", "EF"},
    {"AE", "BC", "DF"},
    {"AF", "BG", "DE"},
    {"AG", "BF", "CD"},
    {"BD", "CF", "EG"},
]


def _montgomery() -> TwoLevelDesign:
    gens = ["E = ABC", "F = BCD", "G = ACD"]
    return TwoLevelDesign(7, tuple(parse_generator(g, NAMES, "g") for g in gens))


def _column(matrix: np.ndarray, word: int) -> np.ndarray:
    col = np.ones(len(matrix), dtype=np.int64)
    for i in range(matrix.shape[1]):
        if word >> i & 1:
            col = col * matrix[:, i]
    return col


def test_2_7_3_defining_relation_and_resolution_match_the_textbook() -> None:
    d = _montgomery()
    assert d.n_runs == 16 and d.p == 3
    assert {word_name(w) for w in d.defining_relation()} == RELATION
    assert d.resolution() == 4


def test_2_7_3_main_effects_alias_only_three_factor_and_higher() -> None:
    d = _montgomery()
    for i in range(7):
        aliases = d.aliases(1 << i)
        assert len(aliases) == 7  # 2^p − 1
        assert min(word_order(w) for w in aliases) == 3


def test_2_7_3_two_factor_interactions_alias_in_the_textbook_chains_of_three() -> None:
    d = _montgomery()
    found = []
    for pair in itertools.combinations(range(7), 2):
        word = (1 << pair[0]) | (1 << pair[1])
        twos = {word_name(w) for w in [word, *d.aliases(word)] if word_order(w) == 2}
        found.append(twos)
        assert twos in CHAINS
    assert all(found.count(chain) == 3 for chain in CHAINS)  # 21 = 7 chains × 3
    est = d.estimable()
    assert [word_name(c[0]) for c in est[:7]] == NAMES
    assert [{word_name(w) for w in c} for c in est[7:]] == CHAINS
    assert d.alias_table()[7] == "AB = CE = FG = ACDF = ADEG = BCDG = BDEF = ABCEFG"


def test_aliasing_equals_equal_columns_brute_force() -> None:
    """Independent oracle: over the 16 runs, two words of order <= 3 are aliased exactly when
    their product columns are identical (and never the negative: the principal fraction)."""
    d = _montgomery()
    m = d.matrix()
    assert len({tuple(r) for r in m}) == 16
    assert np.array_equal(m.T @ m, 16 * np.eye(7, dtype=np.int64))  # orthogonal, balanced
    for word in d.defining_relation():
        assert np.all(_column(m, word) == 1)
    words = [sum(1 << i for i in c) for r in (1, 2, 3) for c in itertools.combinations(range(7), r)]
    for a, b in itertools.combinations(words, 2):
        same = np.array_equal(_column(m, a), _column(m, b))
        assert same == (b in d.aliases(a)), (word_name(a), word_name(b))


def test_matrix_is_standard_order_with_generated_columns() -> None:
    m = _montgomery().matrix()
    assert list(m[:4, 0]) == [-1, 1, -1, 1] and list(m[:4, 1]) == [-1, -1, 1, 1]
    assert np.array_equal(m[:, 4], m[:, 0] * m[:, 1] * m[:, 2])  # E = ABC
    assert np.array_equal(m[:, 6], m[:, 0] * m[:, 2] * m[:, 3])  # G = ACD


def test_resolution_three_half_fraction_and_full_factorial() -> None:
    half = TwoLevelDesign(3, (parse_generator("C = AB", list("ABC"), "g"),))
    assert half.resolution() == 3 and half.n_runs == 4
    assert [word_name(w) for w in half.aliases(1)] == ["BC"]
    assert [word_name(c[0]) for c in half.estimable()] == ["A", "B", "C"]  # 2FIs = mains
    full = TwoLevelDesign(3)
    assert full.resolution() is None and full.n_runs == 8
    assert [word_name(c[0]) for c in full.estimable()] == ["A", "B", "C", "AB", "AC", "BC"]


def test_generators_by_factor_name() -> None:
    names = ["act", "init", "fisher", "refresh", "kl"]
    g = parse_generator("kl = act*init*fisher", names, "g")
    assert g == (4, 0b00111)
    assert parse_generator("E=ABC", names, "g") == g


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("E = ABX", "names an unknown factor 'X'; factors: A=A, B=B"),
        ("E ABC", "must be a string like 'E = ABC'"),
        ("E = AAB", "names factor 'A' twice"),
    ],
)
def test_bad_generators_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        parse_generator(text, list("ABCDE"), "design.generators[0]")
    assert "\n" not in str(err.value) and str(err.value).startswith("design.generators[0]")


def test_a_generated_factor_cannot_generate_another() -> None:
    gens = (parse_generator("D = ABC", NAMES[:5], "g"), parse_generator("E = AD", NAMES[:5], "g"))
    with pytest.raises(UsageError, match="E = AD must be a product of 2 or more base factors"):
        TwoLevelDesign(5, gens)


def test_full_factorial_mixed_levels() -> None:
    m = full_factorial([2, 3, 2])
    assert m.shape == (12, 3)
    assert {tuple(r) for r in m} == set(itertools.product(range(2), range(3), range(2)))
    assert list(m[:3, 0]) == [0, 1, 0]  # the first factor fastest
