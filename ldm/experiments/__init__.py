"""Experiments built from the user's own command lines, each run as stages of one runner
(``runner.py``: a command or function, its outputs and a record of its settings, so that a restart
skips what finished): the loss-weight sweep of Table 2 (``lambda_sweep.py``, its plan and grid
``lambda_sweep_plan.py``, its table ``lambda_sweep_report.py``), the samplers' quality against time
(``sampler_study.py``, ``sampler_study_report.py``, ``sampler_study_plot.py``), the powered study of
post-training against its control (``study.py``, ``study_report.py``, ``study_plot.py``) and its
statistics (``statistics.py``). ``scripts/lambda_sweep.py``, ``scripts/sampler_study.py`` and
``scripts/study.py`` are their command lines."""
