"""Example budgets of the verification suite under each Hypothesis profile."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings


def stateful(examples: int, steps: int) -> settings:
    """``examples`` runs of ``steps`` steps: counts calibrated to find real bugs within
    minutes on CI (whose built-in profile adds derandomization and reproduction blobs).
    A profile chosen by ``HYPOTHESIS_PROFILE`` (``nightly``, ``dev``) sets the count."""
    chosen = bool(os.environ.get("HYPOTHESIS_PROFILE"))
    return settings(
        max_examples=settings().max_examples if chosen else examples,
        stateful_step_count=steps,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
