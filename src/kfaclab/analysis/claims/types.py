"""The verdicts and the ``Claim`` record shared by claims.py and claims_grad.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
BINDS = "the search range binds"


@dataclass
class Claim:
    key: str  # "C1" … "C5"
    title: str
    paper: str  # what the paper says
    finding: str  # what this study finds, in one sentence with its numbers
    verdict: str  # one of VERDICTS
    reason: str  # why this verdict ("" when the finding says it all)
    depends_on: list[str] = field(default_factory=list)  # cell labels
    evidence: dict[str, Any] = field(default_factory=dict)  # plain numbers (JSON-able)

    def verdict_text(self) -> str:
        return f"{self.verdict}: {self.reason}" if self.reason else self.verdict
