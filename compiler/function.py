"""CompiledFunction: what ``Graph.compile`` returns.

The backend's :class:`~symgrad.compiler.backend.NativeFunction` checks arguments and
calls the native entries; this adds what a graph knows: the user's graph, the work graph
with its adjoints, the simplified kernels and the generated IR.
"""
from __future__ import annotations

import hashlib
import threading

import numpy as np

from .backend import NativeFunction
from .pipeline import CompilePlan


def _scipy_sparse():
    try:
        import scipy.sparse
    except ImportError:
        raise ImportError("sparse Jacobians and patterns are scipy.sparse arrays: "
                          "pip install 'symgrad[sparse]' (or scipy)") from None
    return scipy.sparse


class CompiledFunction(NativeFunction):
    """Native forward and vector–Jacobian product of a graph.

    ``f(*inputs, **inputs)`` returns the outputs; ``f.vjp(*inputs, seed=v)`` returns
    ``(outputs, gradients)`` with one gradient per ``wrt`` node: ``vᵀJ``.
    """

    def __init__(self, plan: CompilePlan):
        self.plan = plan
        self._patterns = {}               # sparsity key -> pattern and its colouring
        self._pattern_lock = threading.Lock()
        super().__init__(plan.signature(), plan.entry_specs(), plan)

    def __reduce__(self):
        """Pickled as its graph and compile options (for Dask, multiprocessing), with the
        object code of the entries loaded so far as checksummed cache entries: the
        receiving process uses that code where its symgrad build, LLVM and CPU are this
        one's, and otherwise compiles again (or loads from its disk cache)."""
        from .backend import jit
        from .pipeline import rebuild
        recipe = getattr(self, "recipe", None)
        if recipe is None:
            raise TypeError("this compiled function was not made by Graph.compile and "
                            "cannot be pickled")
        shipped = [(a.key, jit.shipped(a.key, a.names))
                   for a in list(self._artifacts.values()) if a.key is not None]
        return rebuild, recipe + (tuple((k, d) for k, d in shipped if d is not None),)

    def __dask_tokenize__(self):
        """Dask's name for this function in task graphs: the same for every pickled copy."""
        recipe = getattr(self, "recipe", None)
        return recipe[-1] if recipe is not None else id(self)

    def map_blocks(self, *args, in_axes=0, seed=None):
        """This function over the leading axis of Dask arrays, chunk by chunk (see
        :func:`symgrad.compiler.distributed.map_blocks`)."""
        from .distributed import map_blocks
        return map_blocks(self, *args, in_axes=in_axes, seed=seed)

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

    # ---- Jacobians and Hessians, sparse where they are ------------------------------------
    def jacobian(self, *args, sparse=False, **kwargs):
        """Jacobians ∂output/∂wrt: a tuple over ``wrt`` for one output, a tuple over outputs
        of those for several (as jax.jacrev with tuple argnums).

        Dense (the default): arrays of shape ``output.shape + wrt.shape``; forward mode (a
        column per sweep) when the wrt nodes have fewer elements than the outputs (for the
        first Jacobian, while forward mode is not compiled yet: half as many or fewer),
        reverse mode (a row per sweep) otherwise.  ``sparse=True``: ``scipy.sparse`` CSR arrays of
        shape ``(output.size, wrt.size)`` holding the structural nonzeros the graph gives
        (see :meth:`jacobian_sparsity`), one sweep per colour of that pattern, forward or
        reverse, whichever needs fewer."""
        if not sparse:
            return super().jacobian(*args, **kwargs)
        if not self.wrt:
            raise TypeError("jacobian() needs wrt=[...] at compile time")
        return self._blocks(self._sparse("jacobian", args, kwargs), self.outputs)

    def hessian(self, *args, sparse=False, **kwargs):
        """The Hessian of a scalar output: ``H[i][j] = ∂²f/∂w_i∂w_j`` of shape
        ``w_i.shape + w_j.shape`` (one array for one wrt node), one H·e per sweep;
        ``sparse=True``: ``scipy.sparse`` CSR blocks of shape ``(w_i.size, w_j.size)``,
        one H·u per colour of the pattern (see :meth:`hessian_sparsity`)."""
        if not sparse:
            return super().hessian(*args, **kwargs)
        self._forward_mode("hvp")
        blocks = self._blocks(self._sparse("hessian", args, kwargs), self.wrt)
        return blocks[0] if len(self.wrt) == 1 else blocks

    def jacobian_sparsity(self, *args, **kwargs):
        """Where the stacked Jacobian (all outputs flattened × all wrt flattened) can be
        nonzero, from the graph: a boolean ``scipy.sparse`` CSR array.  Arguments are only
        needed for index and mask inputs (the pattern depends on the indices)."""
        return self._pattern_matrix("jacobian", args, kwargs)

    def hessian_sparsity(self, *args, **kwargs):
        """Where the Hessian of a scalar output (all wrt flattened, both ways) can be
        nonzero, from the graph of its gradient."""
        self._forward_mode("hvp")
        return self._pattern_matrix("hessian", args, kwargs)

    def _pattern_matrix(self, kind, args, kwargs):
        sparse = _scipy_sparse()
        if not self.wrt:
            raise TypeError(f"{kind}_sparsity() needs wrt=[...] at compile time")
        arrays = [np.zeros(s, d) for _, s, d in self.inputs] if not args and not kwargs and \
            all(np.dtype(d).kind == "f" for _, _, d in self.inputs) else self._bind(args, kwargs)
        rows, cols, shape, _ = self._pattern(kind, arrays)
        return sparse.csr_array((np.ones(rows.size, bool), (rows, cols)), shape=shape)

    def _pattern(self, kind, arrays) -> tuple:
        """The plan's (rows, columns, shape, (direction, colours)) at these index values,
        cached: a pattern and its colouring cost more than the sweeps they save."""
        key = (kind,) + tuple(hashlib.sha256(a.tobytes()).hexdigest() for a, (_, _, d) in
                              zip(arrays, self.inputs) if np.dtype(d).kind != "f")
        with self._pattern_lock:
            found = self._patterns.get(key)
        if found is None:
            found = self.plan.sparsity(kind, arrays)
            with self._pattern_lock:
                if len(self._patterns) > 16:
                    self._patterns.clear()
                self._patterns[key] = found
        return found

    def _sparse(self, kind, args, kwargs):
        """The stacked Jacobian or Hessian as a CSR array, by compressed sweeps."""
        sparse = _scipy_sparse()
        arrays = self._bind(args, kwargs)
        pattern = self._pattern(kind, arrays)
        rows, cols, shape, _ = pattern
        return sparse.csr_array((self._compressed(kind, arrays, pattern), (rows, cols)),
                                shape=shape)

    def _blocks(self, matrix, row_slots):
        """A stacked CSR matrix cut into blocks [row slot][wrt], nested as the dense ones."""
        r = np.concatenate([[0], np.cumsum([int(np.prod(s)) for _, s, _ in row_slots])])
        c = np.concatenate([[0], np.cumsum([int(np.prod(s)) for _, s, _ in self.wrt])])
        blocks = [tuple(matrix[r[i]:r[i + 1], c[j]:c[j + 1]] for j in range(len(self.wrt)))
                  for i in range(len(row_slots))]
        return blocks[0] if len(row_slots) == 1 else tuple(blocks)


class Structured(CompiledFunction):
    """A compiled function whose outputs or wrt nodes were given as dicts, as jax's
    pytrees: what is per output (values, ``J·u``, the Jacobian's outer level) is a dict
    with the outputs' keys, what is per wrt node (gradients, ``H·u``, the Jacobian's inner
    level, both levels of the Hessian) one with the wrt keys, also through ``vmap``.
    Seeds and tangents may be given as such dicts too.  (A list stays a tuple, as in
    :class:`CompiledFunction`.)"""

    out_keys = None         # the outputs dict's keys in order, or None
    wrt_keys = None

    def __call__(self, *args, **kwargs):
        return self._shaped("outputs", super().__call__(*args, **kwargs))

    def vjp(self, *args, seed=None, **kwargs):
        values, grads = super().vjp(*args, seed=self._flat("outputs", seed), **kwargs)
        return self._shaped("outputs", values), self._shaped("wrt", grads)

    def jvp(self, *args, tangent=None, **kwargs):
        values, tangents = super().jvp(*args, tangent=self._flat("wrt", tangent), **kwargs)
        return self._shaped("outputs", values), self._shaped("outputs", tangents)

    def hvp(self, *args, tangent=None, **kwargs):
        grads, hu = super().hvp(*args, tangent=self._flat("wrt", tangent), **kwargs)
        return self._shaped("wrt", grads), self._shaped("wrt", hu)

    def jacobian(self, *args, sparse=False, **kwargs):
        return self._shaped("jacobian", super().jacobian(*args, sparse=sparse, **kwargs))

    def hessian(self, *args, sparse=False, **kwargs):
        return self._shaped("hessian", super().hessian(*args, sparse=sparse, **kwargs))

    def _specialised_vjp(self):
        fast = super()._specialised_vjp()

        def vjp(*args, seed=None, **kwargs):
            values, grads = fast(*args, seed=self._flat("outputs", seed), **kwargs)
            return self._shaped("outputs", values), self._shaped("wrt", grads)
        vjp.__doc__ = fast.__doc__
        return vjp

    def _shaped(self, kind, result):
        outs, wrts = self.out_keys, self.wrt_keys
        if kind == "outputs":
            return result if outs is None else \
                dict(zip(outs, result if len(outs) > 1 else (result,)))
        if kind == "wrt":
            return result if wrts is None else dict(zip(wrts, result))
        if kind == "jacobian":          # [output][wrt]; one output: the [wrt] row alone
            rows = [result] if len(self.outputs) == 1 else list(result)
            rows = [r if wrts is None else dict(zip(wrts, r)) for r in rows]
            if outs is None:
                return rows[0] if len(rows) == 1 else tuple(rows)
            return dict(zip(outs, rows))
        if wrts is None:                # "hessian": [wrt][wrt]; one wrt: the block alone
            return result
        rows = [[result]] if len(wrts) == 1 else result
        return {a: dict(zip(wrts, row)) for a, row in zip(wrts, rows)}

    def _keyed_hint(self, kind):
        keys = self.out_keys if kind == "outputs" else self.wrt_keys
        return "" if keys is None else f" (or a dict with the keys {list(keys)})"

    def _flat(self, kind, given):
        keys = self.out_keys if kind == "outputs" else self.wrt_keys
        if keys is None or not isinstance(given, dict):
            return given
        if set(given) != set(keys):
            what = "seed" if kind == "outputs" else "tangent"
            raise TypeError(f"a {what} dict needs the keys {list(keys)} (the "
                            f"{'outputs' if kind == 'outputs' else 'wrt'} dict's), got "
                            f"{list(given)}")
        values = [given[k] for k in keys]
        return values[0] if len(values) == 1 else tuple(values)
