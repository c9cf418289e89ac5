"""Hypothesis profiles for the whole suite.

The built-in ``ci`` profile (derandomized, no example database, prints a reproduction
blob on failure) loads itself when the ``CI`` variable is set. ``HYPOTHESIS_PROFILE``
chooses another one by name: ``nightly`` (10,000 examples per test, randomized) or
``dev`` (a quick local loop). Nothing is loaded otherwise, because loading a profile
here unconditionally would switch ``ci`` off.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "nightly",
    max_examples=10_000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=20, deadline=None, print_blob=True)

if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])
