"""Studies on Ray Tune: specs, escape-aware stopping, running, and reading the results.

- :mod:`study.spec`: study specs (YAML), validated before anything starts;
- :mod:`study.runner`: ``run_study`` and ``resume_study`` on a local Ray or a cluster;
- :mod:`study.results`: ``Study.open(dir)`` with the trials and curves tables;
- :mod:`study.cli`: the ``phasetune`` command.
"""
