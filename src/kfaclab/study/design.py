"""Two-level factorial designs: full 2^k and regular fractions 2^(k−p), with their aliasing.

Written here rather than taken from a design library because what the study needs is small and
must be exact: the run matrix, the defining relation, the resolution and the alias chains, all
from generators as a textbook writes them ("E = ABC"). pyDOE3's ``fracfact`` gives the matrix
but not the defining relation or the alias classes the effects model is built from.

Words are bit masks over the factors (bit i: factor i, called ``LETTERS[i]``), so the product of
two effects is the XOR of their masks (A·A = I). A regular fraction is a full factorial in the
k − p base factors with each generated factor's column the product of its generator's columns;
its defining relation is every product of the p defining words (generator word × the generated
factor), and two effects are aliased when their product is in it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kfaclab.errors import UsageError

LETTERS = "ABCDEFGHJKLMNOPQRSTUVWXYZ"  # no "I": it is the identity word
ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI", 7: "VII", 8: "VIII"}


def word_name(mask: int) -> str:
    """ "ABC" for the mask of factors 0, 1, 2; "I" for the identity (mask 0)."""
    return "".join(LETTERS[i] for i in range(mask.bit_length()) if mask >> i & 1) or "I"


def word_order(mask: int) -> int:
    """The number of factors in the word (its length)."""
    return bin(mask).count("1")


def word_key(mask: int) -> tuple[int, tuple[int, ...]]:
    """Textbook order: shorter words first, then lexicographically (AB before AC before BC)."""
    return word_order(mask), tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


@dataclass(frozen=True)
class TwoLevelDesign:
    """A 2^(k−p) design. ``generators``: (generated factor, word of base factors) pairs, e.g.
    (4, mask of ABC) for E = ABC; empty for the full 2^k factorial."""

    k: int
    generators: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.k <= len(LETTERS):
            raise UsageError(f"a design has 1 to {len(LETTERS)} factors, got {self.k}")
        generated = [g for g, _ in self.generators]
        if len(set(generated)) != len(generated):
            raise UsageError(f"each factor may be generated once, got {self.describe()}")
        base_mask = sum(1 << i for i in self.base_factors)
        for g, word in self.generators:
            if not 0 <= g < self.k:
                raise UsageError(f"generator of factor {g} names no factor of {self.k}")
            if word & ~base_mask or word_order(word) < 2:
                raise UsageError(
                    f"generator {LETTERS[g]} = {word_name(word)} must be a product of 2 or more "
                    f"base factors ({word_name(base_mask)})"
                )
        words = [w for _, w in self.generators]
        if len(set(words)) != len(words):
            raise UsageError(f"generators must differ (else two columns are equal), got {words}")

    @property
    def p(self) -> int:
        return len(self.generators)

    @property
    def base_factors(self) -> tuple[int, ...]:
        generated = {g for g, _ in self.generators}
        return tuple(i for i in range(self.k) if i not in generated)

    @property
    def n_runs(self) -> int:
        return 2 ** (self.k - self.p)

    def describe(self) -> str:
        gens = ", ".join(f"{LETTERS[g]} = {word_name(w)}" for g, w in self.generators)
        return f"2^({self.k}-{self.p})" + (f" with {gens}" if gens else " (full)")

    def matrix(self) -> np.ndarray:
        """(n_runs, k) of ±1, in standard (Yates) order: the first base factor alternates
        fastest; a generated column is the product of its generator's columns."""
        base = self.base_factors
        out = np.empty((self.n_runs, self.k), dtype=np.int64)
        runs = np.arange(self.n_runs)
        for j, factor in enumerate(base):
            out[:, factor] = np.where(runs >> j & 1, 1, -1)
        for g, word in self.generators:
            col = np.ones(self.n_runs, dtype=np.int64)
            for i in range(self.k):
                if word >> i & 1:
                    col *= out[:, i]
            out[:, g] = col
        return out

    def defining_relation(self) -> list[int]:
        """Every word equal to I, textbook-sorted (empty for a full factorial)."""
        defining = [w | 1 << g for g, w in self.generators]
        words = set()
        for r in range(1, len(defining) + 1):
            for combo in itertools.combinations(defining, r):
                m = 0
                for w in combo:
                    m ^= w
                words.add(m)
        return sorted(words, key=word_key)

    def resolution(self) -> int | None:
        """The length of the shortest defining word (None: a full factorial, no aliasing)."""
        relation = self.defining_relation()
        return min(map(word_order, relation)) if relation else None

    def aliases(self, word: int) -> list[int]:
        """The words aliased with ``word`` (itself excluded), textbook-sorted."""
        return sorted({word ^ d for d in self.defining_relation()}, key=word_key)

    def estimable(self, max_order: int = 2) -> list[tuple[int, ...]]:
        """One alias class per estimable effect of order <= ``max_order``, main effects first:
        each class lists its words of order <= ``max_order``, the class's name first. A class
        already taken by a shorter word (a 2FI aliased with a main effect at resolution III) is
        not estimated again: its estimate is that main effect's."""
        relation = self.defining_relation()
        taken: set[int] = set()
        out: list[tuple[int, ...]] = []
        for order in range(1, max_order + 1):
            for combo in itertools.combinations(range(self.k), order):
                word = sum(1 << i for i in combo)
                if word in taken:
                    continue
                cls = {word} | {word ^ d for d in relation}
                taken |= cls
                if 0 in cls:  # an effect aliased with the mean (resolution <= 2): never here
                    continue
                short = sorted((w for w in cls if word_order(w) <= max_order), key=word_key)
                out.append(tuple(short))
        return out

    def alias_table(self, max_order: int = 2) -> list[str]:
        """One line per effect of order <= ``max_order``: "A = BCE = DEF = …" (words of every
        order), in textbook order, each class once."""
        lines, seen = [], set()
        for order in range(1, max_order + 1):
            for combo in itertools.combinations(range(self.k), order):
                word = sum(1 << i for i in combo)
                if word in seen:
                    continue
                chain = [word, *self.aliases(word)]
                seen |= set(chain)
                lines.append(" = ".join(word_name(w) for w in chain))
        return lines


def parse_generator(text: str, names: Sequence[str], where: str) -> tuple[int, int]:
    """ "E = ABC" (letters) or "kl = activation*init*fisher" (factor names) → (factor, word)."""
    if not isinstance(text, str) or text.count("=") != 1:
        raise UsageError(f"{where} must be a string like 'E = ABC', got {text!r}")
    left, right = (part.strip() for part in text.split("="))
    target = _factor(left, names, where)
    tokens = [t.strip() for t in right.split("*")] if "*" in right else list(right.replace(" ", ""))
    word = 0
    for token in tokens:
        bit = 1 << _factor(token, names, where)
        if word & bit:
            raise UsageError(f"{where} names factor {token!r} twice, got {text!r}")
        word |= bit
    return target, word


def _factor(token: str, names: Sequence[str], where: str) -> int:
    if token in names:
        return list(names).index(token)
    if len(token) == 1 and token in LETTERS[: len(names)]:
        return LETTERS.index(token)
    letters = ", ".join(f"{LETTERS[i]}={n}" for i, n in enumerate(names))
    raise UsageError(f"{where} names an unknown factor {token!r}; factors: {letters}")


def full_factorial(levels: Sequence[int]) -> np.ndarray:
    """(∏ levels, len(levels)) level indices of every combination, the first factor fastest."""
    grids = np.meshgrid(*[np.arange(n) for n in reversed(levels)], indexing="ij")
    return np.stack([g.ravel() for g in reversed(grids)], axis=1).astype(np.int64)
