"""Client faults in a federated round.

The settings' checks, what one attempt at a round gathered, and the totals and messages built from
it (used by :class:`~fedbiot_pl.callbacks.FederatedLoop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ON_TOO_FEW = ("retry", "stop")


class TooFewClientsError(RuntimeError):
    """A round kept fewer accepted client updates than ``min_clients`` (after any retries)."""


@dataclass
class RoundAttempt:
    """What one attempt at a round gathered.

    The accepted updates with their FedAvg weights and mean losses, and one event per dropped client or
    rejected update.
    """

    attempt: int
    clients: list[int]
    uploads: list[dict[str, Any]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    losses: dict[int, float] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, Any] = field(default_factory=dict, repr=False)  # what the clients started from
    groups: list[dict[str, Any]] = field(default_factory=list)  # a hierarchical round's groups (grouped_round)

    def drop(self, client_id: int, reason: str) -> None:
        """Record that ``client_id``'s fit failed (it raised, its loss was not finite, it timed out)."""
        self.events.append({"attempt": self.attempt, "client": client_id, "outcome": "dropped", "reason": reason})

    def reject(self, client_id: int, reason: str) -> None:
        """Record that the server refused ``client_id``'s upload."""
        self.events.append({"attempt": self.attempt, "client": client_id, "outcome": "rejected", "reason": reason})


def fault_setting_issues(min_clients: Any, on_too_few: Any, max_round_retries: Any, client_time_limit: Any,
                         max_update_norm: Any) -> list[str]:
    """Every invalid fault-handling setting, each naming the field and what it allows."""
    issues = []
    for name, value, low in (("min_clients", min_clients, 1), ("max_round_retries", max_round_retries, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            issues.append(f"{name} must be an integer >= {low}, got {value!r}.")
    if on_too_few not in ON_TOO_FEW:
        issues.append(f"on_too_few must be one of {list(ON_TOO_FEW)}, got {on_too_few!r}.")
    for name, value in (("client_time_limit", client_time_limit), ("max_update_norm", max_update_norm)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            issues.append(f"{name} must be null (no limit) or a number > 0, got {value!r}.")
    return issues


def too_few_message(round_idx: int, attempts: list[RoundAttempt], min_clients: int, on_too_few: str) -> str:
    """Why the run stops: the accepted count, every client's fault, and the settings that help."""
    last = attempts[-1]
    lines = [(
        f"round {round_idx}: only {len(last.losses)} of {len(last.clients)} sampled clients gave an accepted "
        f"update (attempt {last.attempt + 1} of {len(attempts)}), fewer than federated.min_clients={min_clients}."
    )]
    for event in (e for attempt in attempts for e in attempt.events):
        lines.append(
            f"  attempt {event['attempt'] + 1}, client {event['client']} {event['outcome']}: {event['reason']}"
        )
    remedy = ("raise federated.max_round_retries" if on_too_few == "retry"
              else "set federated.on_too_few: retry (with federated.max_round_retries)")
    lines.append(
        f"Fix the failing clients, lower federated.min_clients, or {remedy}. The checkpoints of the finished "
        "rounds are intact: resume with --ckpt_path last."
    )
    return "\n".join(lines)


def round_record(round_idx: int, attempts: list[RoundAttempt]) -> tuple[dict[str, float], dict[str, Any]]:
    """A finished round's client metrics and its history entry.

    The metrics: losses of the accepted clients and their mean, accepted, dropped and rejected counts,
    attempts. The history entry: sampled and accepted clients, attempts, every fault event.
    """
    final = attempts[-1]
    events = [event for attempt in attempts for event in attempt.events]
    metrics = {f"client/{client_id}/loss": loss for client_id, loss in final.losses.items()}
    metrics.update({
        "round/client_loss": sum(final.losses.values()) / len(final.losses),
        "round/index": float(round_idx), "round/clients": float(len(final.losses)),
        "round/dropped": float(sum(event["outcome"] == "dropped" for event in events)),
        "round/rejected": float(sum(event["outcome"] == "rejected" for event in events)),
        "round/attempts": float(len(attempts)),
    })
    entry = {"round": round_idx, "clients": final.clients, "accepted": sorted(final.losses),
             "attempts": len(attempts), "faults": events}
    return metrics, entry


def fault_totals(history: list[dict[str, Any]]) -> dict[str, int]:
    """Dropped clients, rejected updates and round retries over a run's :attr:`FederatedLoop.history`."""
    events = [event for entry in history for event in entry.get("faults", [])]
    return {
        "clients_dropped": sum(event["outcome"] == "dropped" for event in events),
        "uploads_rejected": sum(event["outcome"] == "rejected" for event in events),
        "round_retries": sum(int(entry.get("attempts", 1)) - 1 for entry in history),
    }
