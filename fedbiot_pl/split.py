"""Deprecated module: ``SplitModel`` is now :class:`fedbiot_pl.model.views.ModelViews`.

The old name was confusing next to split learning (Split-FedLLM). ``SplitModel(..., algorithm=...)``
still works and lays the views out for that algorithm (:meth:`ModelViews.use_algorithm`).
"""

from __future__ import annotations

import warnings
from typing import Any

from fedbiot_pl.model.views import ModelViews

MESSAGE = ("fedbiot_pl SplitModel is deprecated: use fedbiot_pl.model.views.ModelViews, and give the algorithm "
           "with views.use_algorithm(...) (the federated loop does it for you).")


class _SplitModel(ModelViews):
    """:class:`ModelViews` that also accepts the old ``algorithm`` argument."""

    def __init__(self, *args: Any, algorithm: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if algorithm is not None and self._config is not None:
            self.use_algorithm(algorithm)


_SplitModel.__name__ = _SplitModel.__qualname__ = "SplitModel"


def __getattr__(name: str) -> Any:
    if name == "SplitModel":
        warnings.warn(MESSAGE, DeprecationWarning, stacklevel=2)
        return _SplitModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
