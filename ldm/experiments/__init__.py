"""Experiments built from the user's own command lines: the shared stage runner (``runner.py``), the
powered study of post-training against its control (``study.py``, ``study_report.py``,
``study_plot.py``) and its statistics (``statistics.py``). The lambda sweep and the sampler study
(``scripts/``) run their stages through the same runner."""
