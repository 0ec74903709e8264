"""Numerical checks of UniRoute's theory: Propositions 1 and 2 and a finite-sample bound.

Modules: `meta` (instances of the meta-distribution), `bayes` (Bayes router and exact LP frontier),
`bounds` (excess risks and bounds), `baselines` (K-NN, prompt-agnostic hull), `experiments`
(batched studies), `plots` (`python -m theory.plots --out DIR [--quick]`). See `theory/README.md`.
"""
