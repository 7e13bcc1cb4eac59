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
    called like ``f`` (``__call__``, ``vjp``, ``jvp``) and returns batched results."""
    return Batched(f, in_axes, out_axes)


class Batched:
    """A compiled function over a batch axis (made by :func:`vmap`)."""

    def __init__(self, f: NativeFunction, in_axes=0, out_axes=0):
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
        for i in ids:
            if not -results[i].ndim <= self.out_axes < results[i].ndim:
                raise ArgumentError(f"out_axes={self.out_axes} is out of range for a result "
                                    f"of shape {results[i].shape[1:]} (batched: "
                                    f"{results[i].ndim} axes)")
        moved = [np.moveaxis(results[i], 0, self.out_axes) if self.out_axes else results[i]
                 for i in ids]
        return moved[0] if len(moved) == 1 else tuple(moved)

    # ---- calling -------------------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        arrays, steps, count = self._bind(args, kwargs)
        self.f._load("forward")
        return self._out(self.f._run_batch("forward", arrays, steps, count), self.f._out_ids)

    def vjp(self, *args, seed=None, **kwargs):
        """Outputs and ``vᵀJ`` per element; a seed of an output's shape is shared, one with a
        leading batch axis is per element (default: 1 for a scalar output)."""
        f = self.f
        if "vjp" not in f._specs:
            f._vjp()                      # raises the reason
        arrays, steps, count = self._bind(args, kwargs)
        seeds = f._seeds_given(seed, count)
        s_arrays, s_steps = self._vectors(seeds, f.seeds, count, "seed")
        results = f._run_batch("vjp", arrays + s_arrays, steps + s_steps, count)
        grads = self._out(results, f._grad_ids)
        return self._out(results, f._out_ids), grads if len(f._grad_ids) > 1 else (grads,)

    def jvp(self, *args, tangent=None, **kwargs):
        """Outputs and ``J·u`` per element; a tangent of a wrt node's shape is shared, one
        with a leading batch axis is per element."""
        f = self.f
        f._forward_mode("jvp")
        arrays, steps, count = self._bind(args, kwargs)
        t_arrays, t_steps = self._vectors(f._tangents_given(tangent, count), f.wrt, count,
                                          "tangent")
        results = f._run_batch("jvp", arrays + t_arrays, steps + t_steps, count)
        return self._out(results, f._out_ids), self._out(results, f._tangent_ids["jvp"])
