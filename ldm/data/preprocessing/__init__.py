"""A split on disk: the pipeline that turns a NIfTI split into NPY slices and an index
(pipeline.py, ``python -m ldm.data.preprocessing``), the contract between a training run and its split
(contract.py), and the way back from model slices to a NIfTI volume in the source geometry
(reassembly.py). Reads ingest/, transforms/ and record.py.
"""
