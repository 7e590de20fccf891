"""Real scans come in: the one loader a patient folder is read through (validation.py), what the
maps must plausibly be (plausibility.py), grids and frame times brought to one (harmonisation.py),
CTP-to-MRI registration and its QC (registration.py, registration_qc.py), from files to files for a
pair (registration_files.py) and a cohort (cohort_registration.py), the ISLES'24 importer
(isles24.py) and the per-patient cohort report (cohort_report.py). Reads transforms/ and record.py.
"""
