"""Worked scheduler loops on embxfer, one per side: on room handles
(``python -m examples.run_schedulers``) and on the SGLang adapter
(``python -m examples.sglang_schedulers``), each running both sides in one process."""
