"""Privacy options for client uploads: local differential privacy (and, with flwr, secure aggregation)."""

from fedbiot_pl.privacy.local_dp import (
    Composition,
    LocalDP,
    PrivacyReport,
    analytic_delta,
    analytic_sigma,
    classic_sigma,
    clip_update,
    compose,
    privatize,
)

__all__ = [
    "Composition",
    "LocalDP",
    "PrivacyReport",
    "analytic_delta",
    "analytic_sigma",
    "classic_sigma",
    "clip_update",
    "compose",
    "privatize",
]
