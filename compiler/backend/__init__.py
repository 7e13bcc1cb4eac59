"""symgrad.compiler.backend: below the compiler — LLVM JIT, code cache, fast-call glue,
compiled functions and ahead-of-time export.

It imports only llvmlite, numpy and the standard library; what a compiled function
computes is handed to it by the compiler (see ``function.NativeFunction``).
"""
from .function import ArgumentError, EntrySpec, NativeFunction, Signature
from .stats import stats

__all__ = ["ArgumentError", "EntrySpec", "NativeFunction", "Signature", "stats"]
