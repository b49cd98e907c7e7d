"""docs/results/FINDINGS.md and `kfaclab claims`: the claims of several runs side by side."""
