"""How λ enters the inverse of a Kronecker-factored curvature block, and what the spectrum says.

Blocks receive λ as an argument and never own it; the damping package decides its value.
"""

from kfaclab.curvature.conventions import from_b2_scaled, to_b2_scaled
from kfaclab.curvature.diagnostics import layer_diagnostics
from kfaclab.curvature.exact import ExactInverse
from kfaclab.curvature.factored import FactoredInverse

__all__ = [
    "ExactInverse",
    "FactoredInverse",
    "from_b2_scaled",
    "layer_diagnostics",
    "to_b2_scaled",
]
