"""Performance benchmark of the three training stages and of sampling.

``timing`` measures medians after warm-up and peak memory, ``flops`` counts FLOPs with
``torch.utils.flop_counter``, ``hardware`` knows the GPUs' peak throughput, ``steps`` builds the
training steps and the sampler the way the stage scripts run them, and ``report`` turns the
measurements into a table and JSON. ``scripts/benchmark.py`` is the command line.
"""
