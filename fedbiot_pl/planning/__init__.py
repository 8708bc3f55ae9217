"""What an algorithm costs, from the model's config alone: the library behind ``fedbiot-plan``.

- :mod:`~fedbiot_pl.planning.traffic`: the bytes a round moves (LoRA, KD top-k logits, split activations),
  pure functions of the settings, and their formulas.
- :mod:`~fedbiot_pl.planning.families`: an algorithm's family (KD, split, LoRA) and the split settings.
- :mod:`~fedbiot_pl.planning.figures`: :func:`~fedbiot_pl.planning.figures.plan`, every figure of one
  algorithm from the model built on the meta device, and :func:`~fedbiot_pl.planning.figures.compare`.
- :mod:`~fedbiot_pl.planning.report`: the human-readable report and the ``--compare`` table.

The command itself (flags, ``--config`` YAML, output) is :mod:`fedbiot_pl.plan`, which re-exports these names.
"""
