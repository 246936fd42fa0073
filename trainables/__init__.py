"""Tasks, models and the training loop of phasetune; runs with or without Ray.

Modules: ``config`` (trial keys and validation; imports neither torch nor Ray),
``tasks`` (data, tokenization, floors), ``models`` (GPT-2, LoRA, MLP), ``evaluate``
(metrics and probes), ``loop`` (``train``), ``stacked`` (a trial's seeds as one model
with stacked weights), ``checkpoint``, ``base_model`` (a local GPT-2 base), ``bench``
(throughput). This package never imports ``study``; importing it imports no torch, so
configs can be checked fast.
"""
