"""The server's side of split learning: the middle segment, its LoRA optimizer and the per-client copies.

:meth:`SplitServer.serve` takes a client's request bytes and answers with bytes, so any channel can
carry them (:class:`~fedbiot_pl.federation.transport.InProcessChannel` calls it directly). A request
that fails the checks of :mod:`fedbiot_pl.split.messages` is answered with an ``error`` and changes
nothing. Requests carry ``client`` and ``round`` in their metadata; the server keeps the graph of the
last forward until its backward.

``shared`` (SplitFed V2): one server LoRA and one AdamW for every client, in the order they come.
``per_client`` (SplitFed V1): each client of a round starts from the round's server LoRA with its
own AdamW state; :meth:`end_round` averages the copies of the accepted clients. A step whose
gradients are not finite is skipped (a bad client cannot poison the shared segment).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import Tensor, nn

from fedbiot_pl.algorithms.base import ClientOptim
from fedbiot_pl.federation.aggregation import fedavg
from fedbiot_pl.federation.messages import decode_message
from fedbiot_pl.split.messages import BackwardUp, Expect, ForwardUp, Reply, StepUp
from fedbiot_pl.split.segments import Segment

log = logging.getLogger(__name__)


def cpu_copy(state: Any) -> Any:
    """A deep copy of a (nested) state with every tensor on the CPU."""
    if isinstance(state, Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {key: cpu_copy(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(cpu_copy(value) for value in state)
    return copy.deepcopy(state)


class SplitServer:
    """Runs the middle segment for every client's micro-batches and trains its LoRA.

    Args:
        segment: the server's layers (:class:`~fedbiot_pl.split.segments.Segment`).
        params: the server's live LoRA parameters by key.
        optim: AdamW settings (the clients').
        expect: what a forward request must look like.
        mode: ``shared`` or ``per_client``.
        keep_optimizer_state: AdamW state carries over between a client's fits (``per_client``) or
            between clients (``shared``); ``False`` = a fresh AdamW for every client's fit.
    """

    def __init__(self, segment: Segment, params: dict[str, nn.Parameter], optim: ClientOptim, expect: Expect,
                 mode: str = "shared", keep_optimizer_state: bool = True) -> None:
        self.segment, self.params, self.optim, self.expect = segment, params, optim, expect
        self.mode, self.keep = mode, keep_optimizer_state
        self._optimizer = self._new_optimizer()
        self._session: tuple[int, int] | None = None
        self._pending: tuple[int, Tensor, Tensor] | None = None
        self._start: dict[str, Tensor] = {}  # the server LoRA at the start of the round (per_client)
        self._copies: dict[int, dict[str, Tensor]] = {}  # per_client: this round's copies (CPU)
        self._states: dict[int, dict] = {}  # per_client: each client's AdamW state (CPU)
        self._staged: dict[int, dict] = {}  # per_client: this round's new states, until end_round
        self._snapshot: Any = None

    def _new_optimizer(self) -> torch.optim.Optimizer:
        o = self.optim
        return torch.optim.AdamW(list(self.params.values()), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)

    def _lora(self) -> dict[str, Tensor]:
        return {key: p.detach().clone() for key, p in self.params.items()}

    @torch.no_grad()
    def _load(self, state: dict[str, Tensor]) -> None:
        for key, value in state.items():
            self.params[key].copy_(value)

    # ------------------------------------------------------------------ requests
    def serve(self, payload: bytes) -> bytes:
        """Answer one request (bytes in, bytes out); a refused request gets an ``error`` reply."""
        try:
            message = decode_message(payload)
            meta = message.metadata
            client, round_idx = int(meta.get("client", -1)), int(meta.get("round", -1))
            if isinstance(message, ForwardUp):
                return self._forward(message, client, round_idx).encode()
            if isinstance(message, BackwardUp):
                return self._backward(message, client).encode()
            if isinstance(message, StepUp):
                self._step()
                return Reply({}).encode()
            raise ValueError(f"a {message.kind!r} message is not a split-learning request")
        except ValueError as error:  # a bad request: the reason goes back, nothing changed
            return Reply({}, {"error": str(error)}).encode()
        except Exception as error:  # a failure while computing: drop the pending graph and its gradients
            log.warning("split server: a request failed", exc_info=True)
            self._discard()
            return Reply({}, {"error": f"the server failed: {type(error).__name__}: {error}"}).encode()

    def _forward(self, message: ForwardUp, client: int, round_idx: int) -> Reply:
        problem = message.problem(self.expect)
        if problem is not None:
            raise ValueError(f"forward of client {client} refused: {problem}")
        self._open(client, round_idx)
        device, dtype = self.segment.model.device, self.segment.model.dtype
        hidden = message.tensors["activations"].to(device=device, dtype=dtype).requires_grad_()
        mask = message.tensors["mask"].to(device=device, dtype=torch.long)
        labels = message.tensors.get("labels")
        self.segment.layers.train()
        with torch.enable_grad():  # a client's autograd Function calls in here with grad off
            out = self.segment(mask, hidden=hidden, labels=None if labels is None else labels.to(device, torch.long))
        self._pending = (client, hidden, out)
        if labels is not None:
            return Reply({"loss": out.detach().float()})
        return Reply({"activations": out.detach().to(self.expect.dtype)})

    def _backward(self, message: BackwardUp, client: int) -> Reply:
        if self._pending is None or self._pending[0] != client:
            raise ValueError(f"backward of client {client} without its forward")
        _, hidden, out = self._pending
        problem = message.problem(out, dtype=self.expect.dtype)
        if problem is not None:
            raise ValueError(f"backward of client {client} refused: {problem}")
        self._pending = None
        (grad,) = message.tensors.values()
        out.backward(grad.to(device=out.device, dtype=out.dtype))
        if hidden.grad is None:
            raise RuntimeError("the server's layers gave no gradient at the cut")
        return Reply({"gradients": hidden.grad.to(self.expect.dtype)})

    def _discard(self) -> None:
        """Drop the pending graph and the server's gradients (a failed or abandoned step)."""
        self._pending = None
        for param in self.params.values():
            param.grad = None

    def _step(self) -> None:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if all(bool(torch.isfinite(g).all()) for g in grads):
            self._optimizer.step()
        else:
            log.warning("split server: a step with non-finite gradients skipped (session %s).", self._session)
        self._optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ sessions and rounds
    def _open(self, client: int, round_idx: int) -> None:
        """Switch to ``client``'s session: its server copy and optimizer state (``per_client``)."""
        if self._session == (client, round_idx):
            return
        self._close()
        self._session = (client, round_idx)
        if self.mode == "per_client":
            self._load(self._start or self._lora())
            self._optimizer = self._new_optimizer()
            if self.keep and client in self._states:  # a copy: AdamW updates its state tensors in place
                self._optimizer.load_state_dict(cpu_copy(self._states[client]))
        elif not self.keep:
            self._optimizer = self._new_optimizer()

    def _close(self) -> None:
        if self._session is None:
            return
        client = self._session[0]
        self._discard()
        if self.mode == "per_client":
            self._copies[client] = cpu_copy(self._lora())
            if self.keep:  # committed by end_round for accepted clients only
                self._staged[client] = cpu_copy(self._optimizer.state_dict())
        self._session = None

    def begin_round(self) -> None:
        """Remember the server's state (a failed attempt goes back to it); ``per_client``: the copies' start."""
        self._close()
        self._copies, self._staged = {}, {}
        self._start = self._lora()
        # the per-client states are only ever replaced (loaded as copies), so a shallow copy keeps them
        self._snapshot = (self._start, cpu_copy(self._optimizer.state_dict()), dict(self._states))

    def restore(self) -> None:
        """Back to :meth:`begin_round`'s state (a retried attempt)."""
        self._session, self._copies, self._staged = None, {}, {}
        self._discard()
        lora, optimizer, states = self._snapshot
        self._load(lora)
        self._optimizer = self._new_optimizer()
        self._optimizer.load_state_dict(cpu_copy(optimizer))
        self._states = dict(states)

    def end_round(self, clients: list[int], weights: list[float]) -> None:
        """Close the last session; ``per_client``: the accepted clients' copies averaged into the server LoRA.

        Their AdamW states are kept for their next round; a rejected or dropped client's are not.
        """
        self._close()
        if self.mode == "per_client" and clients:
            self._load(fedavg([self._copies[c] for c in clients], weights))
            self._states.update({c: self._staged[c] for c in clients if c in self._staged})
        self._copies, self._staged = {}, {}

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The AdamW state(s) (the LoRA itself is in the views' checkpoint)."""
        self._close()
        return {"optimizer": cpu_copy(self._optimizer.state_dict()), "clients": cpu_copy(self._states)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self._optimizer = self._new_optimizer()
        self._optimizer.load_state_dict(state["optimizer"])
        self._states = {int(k): v for k, v in state.get("clients", {}).items()}
