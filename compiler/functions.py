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
        return _graph_of(args, name).apply(name, *args)
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


# ---- shapes, joins and indexing ---------------------------------------------------------
def concatenate(xs, axis=0) -> Expr:
    """numpy's concatenate (PyTorch's cat): the operands joined along ``axis``."""
    xs = list(xs)
    return _graph_of(xs, "concatenate").concatenate(xs, axis)


def stack(xs, axis=0) -> Expr:
    """numpy's stack: the operands (one shape) joined along a new ``axis``."""
    xs = list(xs)
    graph = _graph_of(xs, "stack")
    xs = [graph._operand(x, graph.dtype) for x in xs]
    if len({x.shape for x in xs}) > 1:
        raise ops.ShapeError(f"stack needs operands of one shape, got "
                             f"{', '.join(str(x.shape) for x in xs)}")
    (axis,) = ops.normalize_axes(axis, xs[0].ndim + 1)
    return graph.concatenate([x.expand_dims(axis) for x in xs], axis)


def pad(x: Expr, pad_width, mode="constant", constant_values=0.0) -> Expr:
    """numpy's pad, constant mode."""
    if mode != "constant":
        raise ValueError(f"pad mode {mode!r} is not supported; only 'constant'")
    return x.graph.pad(x, pad_width, constant_values)


def squeeze(x: Expr, axis=None) -> Expr:
    return x.squeeze(axis)


def expand_dims(x: Expr, axis) -> Expr:
    return x.expand_dims(axis)


unsqueeze = expand_dims


def flip(x: Expr, axis=None) -> Expr:
    return x.flip(axis)


def broadcast_to(x: Expr, shape) -> Expr:
    return x.broadcast_to(shape)


def take(x: Expr, indices, axis=None) -> Expr:
    return x.graph.take(x, indices, axis)


def take_along_axis(x: Expr, indices, axis) -> Expr:
    return x.graph.take_along_axis(x, indices, axis)


# ---- products -------------------------------------------------------------------------------
def prod(x: Expr, axes=None, keepdims=False, *, axis=None) -> Expr:
    return x.prod(axes if axis is None else axis, keepdims)


def cumsum(x: Expr, axis=None) -> Expr:
    return x.cumsum(axis)


def matmul(a, b) -> Expr:
    return _graph_of([a, b], "matmul").matmul(a, b)


def dot(a, b) -> Expr:
    """numpy's dot for vectors and matrices (a matmul; a scalar operand multiplies)."""
    graph = _graph_of([a, b], "dot")
    a, b = graph._operand(a, graph.dtype), graph._operand(b, graph.dtype)
    if a.ndim == 0 or b.ndim == 0:
        return a * b
    if a.ndim > 2 or b.ndim > 2:
        raise ops.ShapeError("dot of operands with more than 2 dims is not supported "
                             "(numpy's rule differs from matmul's there); use matmul or einsum")
    return graph.matmul(a, b)


def norm(x: Expr, axis=None, keepdims=False) -> Expr:
    """The 2-norm over ``axis`` (all by default); its slope at 0 is 0, as PyTorch's
    ``linalg.vector_norm``."""
    return (x * x).sum(axis, keepdims).apply("norm_root")


def einsum(subscripts: str, *operands) -> Expr:
    """numpy's einsum for contractions written with explicit or implicit output
    (``"ij,jk->ik"``, ``"bij,bjk->bik"``, ``"i,i"``): one broadcast product, summed over
    the letters not in the output, fused into one loop."""
    graph = _graph_of(list(operands), "einsum")
    xs = [graph._operand(x, graph.dtype) for x in operands]
    if not isinstance(subscripts, str):
        raise TypeError("einsum takes its subscripts as a string, like 'ij,jk->ik'")
    text = subscripts.replace(" ", "")
    if "..." in text:
        raise ValueError("einsum with '...' is not supported; name every axis")
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(xs):
        raise ValueError(f"einsum {subscripts!r} names {len(terms)} operands, got {len(xs)}")
    letters = sorted(set("".join(terms)))
    if not all(c.isalpha() for c in letters):
        raise ValueError(f"einsum subscripts must be letters, got {subscripts!r}")
    if not arrow:
        output = "".join(c for c in letters if "".join(terms).count(c) == 1)
    if len(set(output)) != len(output) or not set(output) <= set(letters):
        raise ValueError(f"einsum output {output!r} must name distinct input letters")
    order = list(output) + [c for c in letters if c not in output]
    sizes: dict = {}
    placed = []
    for term, x in zip(terms, xs):
        if len(term) != x.ndim:
            raise ValueError(f"einsum term {term!r} has {len(term)} letters for an operand "
                             f"of shape {x.shape}")
        if len(set(term)) != len(term):
            raise ValueError(f"einsum term {term!r} repeats a letter (a diagonal): not "
                             "supported")
        for c, n in zip(term, x.shape):
            if sizes.setdefault(c, n) != n:
                raise ops.ShapeError(f"einsum letter {c!r} is {sizes[c]} in one operand and "
                                     f"{n} in another")
        # the operand's axes in the common order, size-1 axes for letters it lacks
        mine = [c for c in order if c in term]
        y = x.transpose([term.index(c) for c in mine])
        for k, c in enumerate(order):
            if c not in term:
                y = y.expand_dims(k)
        placed.append(y)
    product = placed[0]
    for y in placed[1:]:
        product = product * y
    product = product.broadcast_to(tuple(sizes[c] for c in order))
    summed = tuple(range(len(output), len(order)))
    return product.sum(summed) if summed else product


def _graph_of(xs, name):
    graph = next((x.graph for x in xs if isinstance(x, Expr)), None)
    if graph is None:
        raise TypeError(f"{name}() needs at least one graph expression argument")
    return graph


STRUCTURED_FUNCTIONS += ["concatenate", "stack", "pad", "squeeze", "expand_dims", "unsqueeze",
                         "flip", "broadcast_to", "take", "take_along_axis", "prod", "cumsum",
                         "matmul", "dot", "norm", "einsum"]
