"""Worked scheduler loops on embxfer, one per side; ``python -m examples.run_schedulers``
runs both against each other in one process."""
