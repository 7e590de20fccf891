"""What ``torch.compile`` needs before its first call, checked up front (``compile_unet``).

torch.compile compiles lazily, at the first forward: without a C++ compiler (its default backend,
inductor, builds CPU kernels with one) or without triton (its GPU kernels), a run would end at its
first step in a long inductor traceback. :func:`compile_unavailable` says why in one line, so that
the model can refuse with a message that names the switch.
"""
from __future__ import annotations

import importlib.util

COMPILING_BACKENDS = ("inductor",)  # the backends that build kernels (eager / aot_eager do not)


def compile_unavailable(device_type: str, backend: str = "inductor") -> str | None:
    """Why torch.compile with ``backend`` cannot build kernels for ``device_type`` here, or None."""
    if backend not in COMPILING_BACKENDS:
        return None
    if device_type == "cuda":
        return None if importlib.util.find_spec("triton") else "the triton package is not installed"
    if device_type != "cpu":
        return None
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # inductor's internals moved: torch.compile reports for itself
        return None
    try:
        get_cpp_compiler()
    except Exception as error:  # inductor's InvalidCxxCompiler (its search of $CXX, g++, ...)
        return f"no working C++ compiler was found ({type(error).__name__}; install g++ or set CXX)"
    return None
