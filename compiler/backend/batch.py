"""``vmap``: a compiled function over a batch axis, the loop in native code.

The batch is one call: a native loop runs the entry once per element, advancing each
batched argument's pointer by one element and leaving shared ones in place (see
``Lowerer.batched``), with the interpreter's lock released for the whole batch.
"""
from __future__ import annotations

import numpy as np

from .function import ArgumentError, NativeFunction, _coerce


def vmap(f: NativeFunction, in_axes=0, out_axes=0) -> "Batched":
    """``f`` mapped over a batch axis, as ``jax.vmap``: ``in_axes`` gives the batch axis
    of each input (an int for all, or one int or None per input; None: shared by every
    element), ``out_axes`` where the batch axis goes in every result.  The result is
    called like ``f`` (``__call__``, ``vjp``, ``jvp``, ``hvp``, ``jacobian``,
    ``hessian``) and returns batched results."""
    return Batched(f, in_axes, out_axes)


class Batched:
    """A compiled function over a batch axis (made by :func:`vmap`)."""

    def __init__(self, f: NativeFunction, in_axes=0, out_axes=0, shaped=True):
        if not isinstance(f, NativeFunction):
            raise TypeError(f"vmap takes a compiled function (Graph.compile), got {f!r}")
        n = len(f.inputs)
        axes = [in_axes] * n if in_axes is None or isinstance(in_axes, int) else \
            list(in_axes) if isinstance(in_axes, (list, tuple)) else None
        if axes is None or len(axes) != n or \
                any(a is not None and not isinstance(a, int) for a in axes):
            raise TypeError(f"in_axes: an int, None, or one of them per input "
                            f"({', '.join(nm for nm, _, _ in f.inputs)}); got {in_axes!r}")
        if all(a is None for a in axes):
            raise ValueError("vmap needs at least one batched input (in_axes all None)")
        if not isinstance(out_axes, int):
            raise TypeError(f"out_axes must be an int, got {out_axes!r}")
        self.f, self.in_axes, self.out_axes = f, axes, out_axes
        # results keyed as the dicts f was compiled from, or (shaped=False) as lists
        self._shaped = f._shaped if shaped else (lambda kind, result: result)
        self._flat = f._flat

    def __repr__(self):
        return f"vmap({self.f!r}, in_axes={self.in_axes}, out_axes={self.out_axes})"

    # ---- binding -----------------------------------------------------------------------
    def _bind(self, args, kwargs) -> tuple[list, list, int]:
        """(arrays, byte steps, batch size): batched inputs with the batch axis first."""
        f = self.f
        values = f._given(args, kwargs)
        count, moved = None, {}
        for k, axis in enumerate(self.in_axes):
            if axis is None:
                continue
            name = f.inputs[k][0]
            value = np.asarray(values[k])
            if not -value.ndim <= axis < max(value.ndim, 1):
                raise ArgumentError(f"{name}: batch axis {axis} is out of range for an "
                                    f"argument of shape {value.shape}")
            moved[k] = np.moveaxis(value, axis, 0)
            if count is None:
                count, first = moved[k].shape[0], name
            elif moved[k].shape[0] != count:
                raise ArgumentError(f"batch sizes differ: {first} has {count} elements "
                                    f"along its batch axis, {name} {moved[k].shape[0]}")
        arrays, steps = [], []
        for k, value in enumerate(values):
            if k in moved:
                a = f._coerce_input(k, moved[k], lead=(count,))
                arrays.append(a)
                steps.append(a.itemsize * (a.size // count) if count else 0)
            else:
                arrays.append(f._coerce_input(k, value))
                steps.append(0)
        return arrays, steps, count

    def _vectors(self, given, slots, count, what) -> tuple[list, list]:
        """Seeds or tangents: of the slot's shape (shared) or with a leading batch axis."""
        arrays, steps = [], []
        for v, (name, shape, dtype) in zip(given, slots):
            shape, batch = tuple(shape), (count,) + tuple(shape)
            if np.shape(v) not in (shape, batch):
                raise ArgumentError(f"{what} for {name}: expected shape {shape} (shared) or "
                                    f"{batch} (one per element), got {np.shape(v)}")
            a = _coerce(v, f"{what} for {name}", np.shape(v), dtype)
            arrays.append(a)
            steps.append(a.itemsize * (a.size // count) if a.shape == batch and count else 0)
        return arrays, steps

    def _out(self, results, ids):
        for i in ids:       # (every result checked before any is moved)
            self._check_out_axes(results[i])
        moved = [self._moved(results[i]) for i in ids]
        return moved[0] if len(moved) == 1 else tuple(moved)

    def _check_out_axes(self, block):
        if not -block.ndim <= self.out_axes < block.ndim:
            raise ArgumentError(f"out_axes={self.out_axes} is out of range for a result "
                                f"of shape {block.shape[1:]} (batched: {block.ndim} axes)")

    def _moved(self, block):
        """A batched result (batch axis first) with its batch axis at ``out_axes``."""
        self._check_out_axes(block)
        return np.moveaxis(block, 0, self.out_axes) if self.out_axes else block

    # ---- calling -------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        arrays, steps, count = self._bind(args, kwargs)
        self.f._load("forward")
        return self._shaped("outputs", self._out(self.f._run_batch("forward", arrays, steps,
                                                                     count), self.f._out_ids))

    def vjp(self, *args, seed=None, **kwargs):
        """Outputs and ``vᵀJ`` per element; a seed of an output's shape is shared, one with a
        leading batch axis is per element (default: 1 for a scalar output)."""
        f = self.f
        if "vjp" not in f._specs:
            f._vjp()                      # raises the reason
        arrays, steps, count = self._bind(args, kwargs)
        seeds = f._seeds_given(self._flat("outputs", seed), count)
        s_arrays, s_steps = self._vectors(seeds, f.seeds, count, "seed")
        results = f._run_batch("vjp", arrays + s_arrays, steps + s_steps, count)
        grads = self._out(results, f._grad_ids)
        return (self._shaped("outputs", self._out(results, f._out_ids)),
                self._shaped("wrt", grads if len(f._grad_ids) > 1 else (grads,)))

    def jvp(self, *args, tangent=None, **kwargs):
        """Outputs and ``J·u`` per element; a tangent of a wrt node's shape is shared, one
        with a leading batch axis is per element."""
        f = self.f
        f._forward_mode("jvp")
        arrays, steps, count = self._bind(args, kwargs)
        t_arrays, t_steps = self._vectors(f._tangents_given(self._flat("wrt", tangent), count),
                                          f.wrt, count, "tangent")
        results = f._run_batch("jvp", arrays + t_arrays, steps + t_steps, count)
        return (self._shaped("outputs", self._out(results, f._out_ids)),
                self._shaped("outputs", self._out(results, f._tangent_ids["jvp"])))

    def hvp(self, *args, tangent=None, **kwargs):
        """Gradients and ``H·u`` per element, of a function with one scalar output; a
        tangent of a wrt node's shape is shared, one with a leading batch axis is per
        element."""
        f = self.f
        f._forward_mode("hvp")
        arrays, steps, count = self._bind(args, kwargs)
        s_arrays, s_steps = self._vectors(f._seeds_given(None, count), f.seeds, count, "seed")
        t_arrays, t_steps = self._vectors(f._tangents_given(self._flat("wrt", tangent), count),
                                          f.wrt, count, "tangent")
        results = f._run_batch("hvp", arrays + s_arrays + t_arrays,
                               steps + s_steps + t_steps, count)
        grads, hu = self._out(results, f._grad_ids), self._out(results, f._tangent_ids["hvp"])
        if len(f.wrt) == 1:
            grads, hu = (grads,), (hu,)
        return self._shaped("wrt", grads), self._shaped("wrt", hu)

    def jacobian(self, *args, **kwargs):
        """``f.jacobian`` per element: blocks of shape ``output.shape + wrt.shape`` with the
        batch axis at ``out_axes`` (as ``jax.vmap(jax.jacfwd(f))``).  One sweep per wrt
        element (forward mode) or per output element (reverse), whichever is fewer, each
        sweep one native call over the whole batch."""
        f = self.f
        if not f.wrt:
            raise TypeError("jacobian() needs wrt=[...] at compile time")
        arrays, steps, count = self._bind(args, kwargs)
        m, n = f._elements(f.outputs), f._elements(f.wrt)
        if "vjp" not in f._specs or n <= m:
            f._forward_mode("jvp")
            blocks = self._sweeps("jvp", arrays, steps, count, f.wrt, f._tangent_ids["jvp"],
                                  f.outputs)
        else:         # a row e_kᵀJ per sweep: the blocks of Jᵀ, each transposed back
            transposed = self._sweeps("vjp", arrays, steps, count, f.seeds, f._grad_ids, f.wrt)
            blocks = [[np.moveaxis(transposed[s][r], range(1, 1 + len(w)),
                                   range(-len(w), 0)) for s, (_, w, _) in enumerate(f.wrt)]
                      for r in range(len(f.outputs))]
        blocks = self._placed(blocks)
        return self._shaped("jacobian", blocks[0] if len(f.outputs) == 1 else blocks)

    def hessian(self, *args, **kwargs):
        """``f.hessian`` per element (one scalar output): blocks of shape ``w_i.shape +
        w_j.shape`` with the batch axis at ``out_axes``, one native call over the batch
        per wrt element."""
        f = self.f
        f._forward_mode("hvp")
        arrays, steps, count = self._bind(args, kwargs)
        s_arrays, s_steps = self._vectors(f._seeds_given(None, count), f.seeds, count, "seed")
        blocks = self._sweeps("hvp", arrays + s_arrays, steps + s_steps, count, f.wrt,
                              f._tangent_ids["hvp"], f.wrt)
        blocks = self._placed(blocks)
        return self._shaped("hessian", blocks[0][0] if len(f.wrt) == 1 else blocks)

    def _sweeps(self, kind, arrays, steps, count, swept, ids, results) -> list:
        """Blocks ``[r][s]`` of shape ``(count,) + results[r].shape + swept[s].shape``:
        entry ``kind`` over the batch once per element of the ``swept`` slots (tangents or
        seeds), its unit vector shared by the batch; ``ids``: the results' nodes."""
        f = self.f
        sweeps = [f._run_batch(kind, arrays + f._basis(swept, k), steps + [0] * len(swept),
                               count) for k in range(f._elements(swept))]
        blocks = []
        for i, (_, shape, _) in zip(ids, results):
            stacked = np.stack([c[i].reshape(count, -1) for c in sweeps], axis=-1)
            blocks.append([part.reshape((count,) + tuple(shape) + tuple(w)) for part, (_, w, _)
                           in zip(np.split(stacked, f._offsets(swept), axis=-1), swept)])
        return blocks

    def _placed(self, blocks) -> tuple:
        """Blocks ``[r][s]`` (batch axis first) as tuples, each contiguous with its batch
        axis at ``out_axes`` (as ``f.jacobian``'s blocks are contiguous)."""
        return tuple(tuple(np.ascontiguousarray(self._moved(b)) for b in row)
                     for row in blocks)
