"""A simulated CTP / DWI / ADC cohort for the demo and the tests (``python -m ldm.data.synthetic``):
anatomy and skull, vessels, lesions (lesion.py: the cohort's lesion law), perfusion, the MRI signal,
the cohort writer (cohort.py) and the unstripped CTP/MRI pair for registration (pair.py).
Reads record.py; nothing outside tests, benchmarks and the demo imports it.
"""
