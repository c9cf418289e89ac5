"""Benchmarks of embxfer against the physical limits beside it (raw Mooncake writes,
``torch`` copies), run by ``embxfer bench``.

One module per benchmark, each a ``run(settings) -> list[Metric]``; ``runner`` runs them
in one process, ``report`` prints and plots what they found. Timing lives here and
never in unit tests: the machines tests run on are too noisy to assert on.
"""
