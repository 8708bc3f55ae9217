"""Named evaluation presets: the FedBiOT authors' decoding for GSM8K, and for code (HumanEval-X) with pass@k.

Use them from Python, e.g. ``EvaluationSettings.of(HUMANEVALX_EVALUATION.to_dict() | {"limit": 20})``,
or through the equal YAML files: ``configs/eval/humanevalx.yaml`` (``data.evaluation`` of ``python
train.py test``, added as a second ``--config``) and ``configs/eval/humanevalx_generation.yaml``
(``python train.py evaluate --task humanevalx --generation <it> --k 1,10``). The defaults of
:class:`~fedbiot_pl.modules.generation_module.GenerationSettings` stay greedy decoding.
"""

from __future__ import annotations

from fedbiot_pl.evaluation.settings import EvaluationSettings
from fedbiot_pl.modules.generation_module import GenerationSettings

HUMANEVALX_GENERATION = GenerationSettings(max_new_tokens=128, do_sample=True, temperature=0.1, top_p=0.75, top_k=40,
                                           num_return_sequences=20)
"""The authors' code decoding (``eval_for_code/humanevalx.py``): at most 128 new tokens, sampling at
temperature 0.1 with top-p 0.75 and top-k 40, 20 samples per problem (the reference's count; an
earlier version of their script drew 5, too few for pass@10)."""

HUMANEVALX_K = (1, 10)
"""pass@1 and pass@10: the paper does not say which k its code "accuracy" is; both follow from 20 samples."""

HUMANEVALX_EVALUATION = EvaluationSettings(task="humanevalx", generation=HUMANEVALX_GENERATION, k=HUMANEVALX_K)
"""``trainer.test``'s HumanEval-X evaluation with the paper's decoding, on the task's default rows."""

GSM8K_GENERATION = GenerationSettings(max_new_tokens=256, do_sample=True, temperature=0.8, top_p=0.95)
"""The authors' GSM8K decoding (``eval_for_gsm8k/eval_with_demo.py``): sampling at temperature 0.8 with
top-p 0.95, at most 256 new tokens."""

GSM8K_EVALUATION = EvaluationSettings(task="gsm8k", generation=GSM8K_GENERATION, shots=8)
"""``trainer.test``'s GSM8K evaluation with the paper's 8 demonstrations and decoding (``configs/eval/gsm8k.yaml``)."""
