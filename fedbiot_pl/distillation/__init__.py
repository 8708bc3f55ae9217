"""Knowledge distillation on a public set: top-k logits, their wire format, targets and the gathered loss.

Pure functions and small value types, tested on hand-made tensors:

* :mod:`~fedbiot_pl.distillation.topk` -- :class:`TopK` (a ragged top-k payload) and its extraction;
* :mod:`~fedbiot_pl.distillation.loss` -- the distillation loss that gathers the k kept entries;
* :mod:`~fedbiot_pl.distillation.targets` -- aggregation (``fed_kd``), teacher selection (``fedmkt``)
  and padding targets onto a batch;
* :mod:`~fedbiot_pl.distillation.token_alignment` -- mapping top-k logits between two vocabularies.
"""

from fedbiot_pl.distillation.loss import dense_distill_loss, distill_loss
from fedbiot_pl.distillation.targets import aggregate_topk, batch_targets, select_targets
from fedbiot_pl.distillation.topk import TopK, index_dtype, topk_of_batch

__all__ = [
    "TopK", "aggregate_topk", "batch_targets", "dense_distill_loss", "distill_loss", "index_dtype",
    "select_targets", "topk_of_batch",
]
