"""Functions on graph expressions: ``sin(x)``, ``maximum(a, b)``, ``sum(x, axes)``, …

Each elementwise one is made from its operator-table entry (``ops.on_register``), so
declaring an operator there adds its function here — at import, or later.
"""
from __future__ import annotations

import math

from . import ops
from .graph import Expr

PUBLIC: list = []            # names of the elementwise functions, in table order


def _elementwise(entry):
    name = entry.name

    def fn(*args):
        graph = next((a.graph for a in args if isinstance(a, Expr)), None)
        if graph is None:
            raise TypeError(f"{name}() needs at least one graph expression argument")
        return graph.apply(name, *args)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"Elementwise {name}: {entry.formula} (a, b: operands)."
    return fn


def _register(entry):
    if entry.public and entry.name not in ("add", "sub", "mul", "div", "neg"):
        globals()[entry.name] = _elementwise(entry)
        if entry.name not in PUBLIC:
            PUBLIC.append(entry.name)


def _forget(entry):
    if entry.name in PUBLIC:
        PUBLIC.remove(entry.name)
        del globals()[entry.name]


ops.on_register(_register, _forget)


def sum(x: Expr, axes=None, keepdims=False) -> Expr:
    return x.sum(axes, keepdims)


def mean(x: Expr, axes=None, keepdims=False) -> Expr:
    return x.mean(axes, keepdims)


def reshape(x: Expr, shape) -> Expr:
    return x.reshape(shape)


def transpose(x: Expr, perm=None) -> Expr:
    return x.transpose(perm)


def amax(x: Expr, axes=None, keepdims=False, *, axis=None) -> Expr:
    """The largest entry over the axes (numpy's amax, PyTorch's amax: ties share)."""
    return x.max(axes if axis is None else axis, keepdims)


def amin(x: Expr, axes=None, keepdims=False, *, axis=None) -> Expr:
    return x.min(axes if axis is None else axis, keepdims)


def _shift(x: Expr, axes) -> Expr:
    """The largest entry over ``axes``, kept as axes of size 1, as a constant for the
    derivative (it cancels mathematically), and 0 where it is ±inf (so inf − inf is not
    made): the shift that keeps exp from overflowing, as PyTorch's logsumexp takes it."""
    m = x.max(axes, keepdims=True).apply("stop_gradient")
    return abs(m).apply("eq", math.inf).apply("where", 0.0, m)


def logsumexp(x: Expr, axes=None, keepdims=False, *, axis=None) -> Expr:
    """log Σ exp(x) over the axes, without overflow for large x (logits × 400)."""
    axes = ops.normalize_axes(axes if axis is None else axis, x.ndim)
    m = _shift(x, axes)
    out = (x - m).apply("exp").sum(axes, keepdims=True).apply("log") + m
    if keepdims:
        return out
    return out.reshape(tuple(n for i, n in enumerate(x.shape) if i not in axes))


def softmax(x: Expr, axis=-1) -> Expr:
    """exp(x) / Σ exp(x) along ``axis``, shifted by the maximum: no overflow."""
    axes = ops.normalize_axes(axis, x.ndim)
    e = (x - _shift(x, axes)).apply("exp")
    return e / e.sum(axes, keepdims=True)


def log_softmax(x: Expr, axis=-1) -> Expr:
    """x − logsumexp(x) along ``axis``."""
    axes = ops.normalize_axes(axis, x.ndim)
    return x - logsumexp(x, axes, keepdims=True)


def var(x: Expr, axes=None, keepdims=False, *, axis=None, ddof=0) -> Expr:
    """numpy's var (ddof=0 by default; PyTorch's var is ddof=1)."""
    axes = ops.normalize_axes(axes if axis is None else axis, x.ndim)
    d = x - x.mean(axes, keepdims=True)
    count = math.prod(x.shape[a] for a in axes) - ddof
    return (d * d).sum(axes, keepdims) * (1.0 / count if count > 0 else math.nan)


def std(x: Expr, axes=None, keepdims=False, *, axis=None, ddof=0) -> Expr:
    return var(x, axes, keepdims, axis=axis, ddof=ddof).apply("sqrt")


def clamp(x: Expr, min=None, max=None) -> Expr:
    return x.clamp(min, max)


clip = clamp
STRUCTURED_FUNCTIONS = ["sum", "mean", "reshape", "transpose", "clamp", "clip", "amax", "amin",
                        "logsumexp", "softmax", "log_softmax", "var", "std"]
