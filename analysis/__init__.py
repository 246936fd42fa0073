"""Escape times, law fits, phase diagrams and the study report.

Runs on a laptop over tables copied from a cluster: nothing here imports Ray or torch.

- :mod:`analysis.escape`: the one escape rule (shared with the online stopper).
- :mod:`analysis.escape_times`: onset, escape, waiting time per trial and seed.
- :mod:`analysis.laws`: one fitter per law and :func:`analysis.laws.fit_all`.
- :mod:`analysis.figures`, :mod:`analysis.report`: PNGs, ``laws.json``, ``report.md``.
- :mod:`analysis.simulate`: study tables simulated from known laws.
"""
