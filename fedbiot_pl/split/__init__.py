"""Split learning: the model cut into client and server segments, the per-step messages, the two sides.

:mod:`.segments` cuts the views' LoRA model; :mod:`.link` is the client's autograd line over a channel;
:mod:`.server` runs the server's segment; :mod:`.messages` defines what crosses and the server's checks.
The algorithms are :mod:`fedbiot_pl.algorithms.split`.

``fedbiot_pl.split.SplitModel`` is the deprecated old name of :class:`fedbiot_pl.model.views.ModelViews`
(the model views were called that before split learning joined the toolkit); it still imports, with a
``DeprecationWarning``, and accepts ``algorithm=`` (:meth:`ModelViews.use_algorithm`).
"""

from __future__ import annotations

import warnings
from typing import Any

MESSAGE = ("fedbiot_pl SplitModel is deprecated: use fedbiot_pl.model.views.ModelViews, and give the algorithm "
           "with views.use_algorithm(...) (the federated loop does it for you).")


_CACHE: dict[str, type] = {}


def _split_model() -> type:
    from fedbiot_pl.model.views import ModelViews

    class SplitModel(ModelViews):
        """:class:`ModelViews` that also accepts the old ``algorithm`` argument."""

        def __init__(self, *args: Any, algorithm: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if algorithm is not None and self._config is not None:
                self.use_algorithm(algorithm)

    SplitModel.__module__ = __name__
    SplitModel.__qualname__ = "SplitModel"
    return SplitModel


def __getattr__(name: str) -> Any:
    if name == "SplitModel":
        warnings.warn(MESSAGE, DeprecationWarning, stacklevel=2)
        if name not in _CACHE:
            _CACHE[name] = _split_model()
        return _CACHE[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
