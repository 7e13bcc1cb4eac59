"""The operator table: every operator symgrad knows, declared once.

Two families, one table each:

* ``ELEMENTWISE`` — an operator is a scalar sympy formula.  Its local Jacobian
  ``J`` for operand k is ``∂formula/∂a_k`` (from ``sympy.diff`` unless a simpler
  hand-written partial is given), one scalar expression: a diagonal, never
  materialised.  Operands broadcast as numpy does.
* ``STRUCTURED`` — matmul, reductions and views.  Each declares a shape rule, a
  numpy reference and its VJP as a small graph builder.

The VJP builders and the partials are written against a tiny interface that both
compiler expressions (``Expr``) and runtime tensors implement: ``+ - * / @``,
``.sum(axes, keepdims)``, ``.reshape(shape)``, ``.transpose(perm)``,
``.broadcast_to(shape)`` and ``.apply(op, *args)``.  That is why one table serves
the compiler's reverse pass and the runtime's ``create_graph=True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp

# Symbols the formulas are written in: operands a, b and the operator's own output.
A, B, OUT = sp.symbols("a b out", real=True)


@dataclass(frozen=True)
class Elementwise:
    name: str
    arity: int
    formula: sp.Expr            # in A (and B)
    numpy: Callable
    partials: tuple             # one sympy expression per operand, in A, B and OUT

    def local_jacobian(self, slot: int) -> sp.Expr:
        return self.partials[slot]


ELEMENTWISE: dict[str, Elementwise] = {}


def elementwise(name, formula, numpy, partials=None):
    """Declare an elementwise operator: forward formula and derivative side by side."""
    arity = 2 if formula.has(B) else 1
    operands = (A, B)[:arity]
    if partials is None:
        partials = tuple(sp.diff(formula, a) for a in operands)
    ELEMENTWISE[name] = Elementwise(name, arity, formula, numpy, tuple(partials))


def _sigmoid(x):
    # numerically stable on both tails
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _heaviside(x, h0):
    return np.heaviside(x, h0).astype(np.result_type(x, h0), copy=False)


# ---- arithmetic -------------------------------------------------------------
elementwise("add", A + B, np.add)
elementwise("sub", A - B, np.subtract)
elementwise("mul", A * B, np.multiply)
elementwise("div", A / B, np.divide)
elementwise("neg", -A, np.negative)
# d/da a**b written as b*a**(b-1), not sympy's a**b*b/a, so x**2 at x = 0 has slope 0.
elementwise("pow", A**B, np.power, partials=(B * A ** (B - 1), OUT * sp.log(A)))
# ---- transcendental ---------------------------------------------------------
elementwise("exp", sp.exp(A), np.exp, partials=(OUT,))
elementwise("log", sp.log(A), np.log)
elementwise("sqrt", sp.sqrt(A), np.sqrt, partials=(1 / (2 * OUT),))
elementwise("sin", sp.sin(A), np.sin)
elementwise("cos", sp.cos(A), np.cos)
elementwise("tan", sp.tan(A), np.tan, partials=(1 + OUT**2,))
elementwise("tanh", sp.tanh(A), np.tanh, partials=(1 - OUT**2,))
elementwise("sigmoid", 1 / (1 + sp.exp(-A)), _sigmoid, partials=(OUT * (1 - OUT),))
# ---- piecewise ----------------------------------------------------------------
# Ties follow PyTorch: relu'(0) = 0, |x|'(0) = 0, maximum/minimum split a tie in half
# (sympy's Heaviside(0) = 1/2).
elementwise("relu", sp.Max(A, 0), lambda x: np.maximum(x, 0).astype(np.asarray(x).dtype),
            partials=(sp.Heaviside(A, 0),))
elementwise("abs", sp.Abs(A), np.abs, partials=(sp.sign(A),))
elementwise("maximum", sp.Max(A, B), np.maximum,
            partials=(sp.Heaviside(A - B), sp.Heaviside(B - A)))
elementwise("minimum", sp.Min(A, B), np.minimum,
            partials=(sp.Heaviside(B - A), sp.Heaviside(A - B)))
elementwise("sign", sp.sign(A), np.sign, partials=(sp.S.Zero,))
# heaviside(x, h0): the step the partials above are made of; flat almost everywhere.
elementwise("heaviside", sp.Heaviside(A, B), _heaviside, partials=(sp.S.Zero, sp.S.Zero))
# ---- data movement that fuses like arithmetic -----------------------------------
# broadcast: the operand read with stride 0 on new or size-1 axes (shape is a parameter).
elementwise("broadcast", A, lambda a: a, partials=(sp.S.One,))
elementwise("copy", A, np.copy, partials=(sp.S.One,))


# ---- shapes ---------------------------------------------------------------------
def broadcast_shapes(*shapes: tuple) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(
            f"shapes {' and '.join(map(str, shapes))} do not broadcast: trailing "
            "dimensions must be equal or 1") from None


class ShapeError(ValueError):
    """Operand shapes do not fit an operator."""


def unbroadcast(adjoint, shape: tuple):
    """Sum an adjoint of a broadcast result back to the operand's ``shape``."""
    if tuple(adjoint.shape) == tuple(shape):
        return adjoint
    lead = len(adjoint.shape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and adjoint.shape[lead + i] != 1)
    return adjoint.sum(axes, keepdims=True).reshape(shape)


def normalize_axes(axes, ndim: int) -> tuple:
    if axes is None:
        return tuple(range(ndim))
    if isinstance(axes, (int, np.integer)):
        axes = (int(axes),)
    out = []
    for ax in axes:
        if not isinstance(ax, (int, np.integer)) or not -ndim <= ax < max(ndim, 1):
            raise ShapeError(f"axis {ax!r} is out of range for a tensor with {ndim} dims")
        out.append(int(ax) % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ShapeError(f"axes {tuple(axes)} repeat an axis")
    return tuple(sorted(out))


def reshape_target(shape: tuple, new_shape) -> tuple:
    """Resolve one -1 in ``new_shape`` and check the element count."""
    if isinstance(new_shape, (int, np.integer)):
        new_shape = (new_shape,)
    new_shape = tuple(int(n) for n in new_shape)
    size = math.prod(shape)
    if new_shape.count(-1) > 1 or any(n < -1 for n in new_shape):
        raise ShapeError(f"cannot reshape {shape} to {new_shape}: at most one -1, no negatives")
    if -1 in new_shape:
        known = math.prod(n for n in new_shape if n != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {shape} ({size} elements) to {new_shape}")
        new_shape = tuple(size // known if n == -1 else n for n in new_shape)
    if math.prod(new_shape) != size:
        raise ShapeError(f"cannot reshape {shape} ({size} elements) to {new_shape} "
                         f"({math.prod(new_shape)} elements)")
    return new_shape


# ---- structured operators ------------------------------------------------------------
@dataclass(frozen=True)
class Structured:
    name: str
    shape: Callable      # (operand shapes, params) -> output shape
    numpy: Callable      # (operand arrays, params) -> array
    vjp: Callable        # (adjoint, operands, out, params) -> one adjoint per operand
    text: tuple          # the VJP for each operand, as the documents write it


STRUCTURED: dict[str, Structured] = {}


def structured(name, shape, numpy, vjp, text):
    STRUCTURED[name] = Structured(name, shape, numpy, vjp, text)


def _sum_shape(shapes, params):
    axes, keepdims = params
    (shape,) = shapes
    if keepdims:
        return tuple(1 if i in axes else n for i, n in enumerate(shape))
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _sum_vjp(adjoint, args, out, params):
    axes, keepdims = params
    shape = args[0].shape
    kept = tuple(1 if i in axes else n for i, n in enumerate(shape))
    return [adjoint.reshape(kept).broadcast_to(shape)]


def _matmul_shape(shapes, params):
    (m, k), (k2, n) = shapes
    if k != k2:
        raise ShapeError(f"matmul of {shapes[0]} and {shapes[1]}: inner dimensions "
                         f"{k} and {k2} differ")
    return (m, n)


def _transpose_shape(shapes, params):
    (shape,) = shapes
    return tuple(shape[p] for p in params[0])


def _inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


structured("sum", _sum_shape,
           lambda args, p: np.sum(args[0], axis=p[0], keepdims=p[1]),
           _sum_vjp, ("P_a = broadcast(P_out)",))
structured("reshape", lambda shapes, p: p[0],
           lambda args, p: np.reshape(args[0], p[0]),
           lambda adj, args, out, p: [adj.reshape(args[0].shape)], ("P_a = reshape(P_out)",))
structured("transpose", _transpose_shape,
           lambda args, p: np.transpose(args[0], p[0]),
           lambda adj, args, out, p: [adj.transpose(_inverse(p[0]))],
           ("P_a = transpose(P_out)",))
# Bilinear: P_a = P_c·bᵀ, P_b = aᵀ·P_c.
structured("matmul", _matmul_shape,
           lambda args, p: np.matmul(args[0], args[1]),
           lambda adj, args, out, p: [adj @ args[1].transpose((1, 0)),
                                      args[0].transpose((1, 0)) @ adj],
           ("P_a = P_c·bᵀ", "P_b = aᵀ·P_c"))


def evaluate(op: str, args: list, params: tuple, shape: tuple, dtype) -> np.ndarray:
    """Numpy reference value of one operator application."""
    if op == "const":
        return np.asarray(params[0], dtype=dtype)
    if op in ELEMENTWISE:
        with np.errstate(all="ignore"):
            value = ELEMENTWISE[op].numpy(*[np.asarray(a, dtype=dtype) for a in args])
        return np.broadcast_to(np.asarray(value, dtype=dtype), shape).copy()
    return np.asarray(STRUCTURED[op].numpy(args, params), dtype=dtype)
