"""CompiledFunction: what ``Graph.compile`` returns.

The backend's :class:`~symgrad.compiler.backend.NativeFunction` checks arguments and
calls the native entries; this adds what a graph knows: the user's graph, the work graph
with its adjoints, the simplified kernels and the generated IR.
"""
from __future__ import annotations

from .backend import NativeFunction
from .pipeline import CompilePlan


class CompiledFunction(NativeFunction):
    """Native forward and vector–Jacobian product of a graph.

    ``f(*inputs, **inputs)`` returns the outputs; ``f.vjp(*inputs, seed=v)`` returns
    ``(outputs, gradients)`` with one gradient per ``wrt`` node: ``vᵀJ``.
    """

    def __init__(self, plan: CompilePlan):
        self.plan = plan
        super().__init__(plan.signature(), plan.entry_specs(), plan)

    @property
    def graph(self):
        """The graph the function was compiled from."""
        return self.plan.graph

    @property
    def work(self):
        """The graph that was compiled: the user's nodes plus seeds and adjoints."""
        return self.plan.work

    @property
    def llvm_ir(self) -> str:
        """The LLVM IR of every entry point, before optimisation."""
        return "\n".join(self.artifact(k).llvm_ir for k in self.kinds)

    @property
    def optimized_ir(self) -> str:
        return "\n".join(self.artifact(k).optimized_ir for k in self.kinds)

    def kernels(self, entry="vjp"):
        """The simplified scalar kernels (sympy) of an entry point."""
        entry = entry if entry in self._specs else "forward"
        return self.artifact(entry).kernels(entry)

    def export(self, path: str, name: str = "symgrad_fn", kind: str = "shared",
               overwrite: bool = False) -> list:
        """Write a native object (``kind="obj"``) or shared library and a C header beside
        it; an existing header is replaced only with ``overwrite=True``."""
        from .backend.aot import export
        return export(self, path, name=name, kind=kind, overwrite=overwrite)
