"""Helpers shared by every kernel family: backend choice and the op guard, input checks, state and
chunk layouts, the feature map, and the Triton helpers (tile sizes, device functions, autotune
configs). Modules that import Triton (``ops``, ``tiles``, ``autotune``) are only imported by the
Triton paths."""
