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

import ctypes
import ctypes.util
import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import expm1, hypot, log1p, log2, log10

from .errors import GraphError, ShapeError

# Symbols the formulas are written in: operands a, b, c and the operator's own output.
A, B, C, OUT = sp.symbols("a b c out", real=True)
OPERANDS = (A, B, C)


@dataclass(frozen=True)
class Elementwise:
    """One elementwise operator, everything about it in one place."""
    name: str
    arity: int
    formula: sp.Expr            # in A (and B, C)
    numpy: Callable
    partials: tuple             # one sympy expression per operand, in A, B and OUT
    torch: str | None           # PyTorch's function/method name (None: not offered there)
    grad_fn: str | None         # PyTorch's grad_fn name for it ("SinBackward0")
    sympy: type | None          # the SymPy function ``from_sympy`` imports as this operator
    libm: str | None            # the C math function it lowers to, when it is one call
    public: bool = True         # a graph function (``symgrad.compiler.sin``), a CLI name
    domain: str = "real"        # where it is smooth, for tests: "real", "positive", "small"
    templates: tuple = field(default=(), compare=False)   # the partials, ready to build

    def local_jacobian(self, slot: int) -> sp.Expr:
        return self.partials[slot]


ELEMENTWISE: dict[str, Elementwise] = {}
STRUCTURED: dict = {}                    # name -> Structured (below)
SYMPY_OPS: dict[type, str] = {}          # sympy function class -> operator name
_listeners: list[tuple] = []


def on_register(add: Callable, remove: Callable | None = None) -> None:
    """Call ``add(entry)`` for every operator, those declared so far and those to come
    (and ``remove(entry)`` when one is unregistered): how the graph functions, Tensor
    methods and module functions follow the table."""
    _listeners.append((add, remove))
    for entry in list(ELEMENTWISE.values()):
        if entry.templates:        # completed (all are, once the built-ins are)
            add(entry)


@functools.lru_cache(maxsize=None)
def _libm_has(name: str) -> bool:
    path = ctypes.util.find_library("m")
    return bool(path) and hasattr(ctypes.CDLL(path), name)


def _own_function(formula, arity):
    """The SymPy function class ``formula`` applies to the operands (sinh for sinh(a))."""
    if isinstance(formula, sp.Function) and formula.args == OPERANDS[:arity]:
        return type(formula)
    return None


def elementwise(name, formula, numpy, partials=None, torch="", grad_fn=None, public=True,
                libm="", domain="real"):
    """Declare an elementwise operator: forward formula and derivative side by side.

    ``torch`` defaults to ``name`` (None: PyTorch has no such operator); ``libm`` to the
    SymPy function's own name when the formula is one function of the operands (``sinh``
    lowers to libm's ``sinh``; None: lowered from its formula).  The entry is completed
    here: its partials are built into templates, so a partial that uses a function the
    table does not know fails now, not at the first gradient."""
    if name in ELEMENTWISE or name in STRUCTURED:
        raise GraphError(f"operator {name!r} is declared twice")
    arity = 3 if formula.has(C) else 2 if formula.has(B) else 1
    operands = OPERANDS[:arity]
    if partials is None:
        partials = tuple(sp.diff(formula, a) for a in operands)
    partials = tuple(sp.sympify(p) for p in partials)
    own = _own_function(formula, arity)
    if libm == "":   # Abs, Max, sign… have lowering rules of their own
        libm = own.__name__ if own is not None and _libm_has(own.__name__) else None
    elif libm is not None and not _libm_has(libm):
        raise GraphError(f"operator {name!r}: the C math library has no {libm!r}")
    torch = name if torch == "" else torch
    if grad_fn is None and torch:
        grad_fn = "".join(w.capitalize() for w in torch.split("_")) + "Backward0"
    entry = Elementwise(name, arity, formula, numpy, partials, torch, grad_fn, own, libm, public,
                        domain)
    ELEMENTWISE[name] = entry
    if own is not None:
        SYMPY_OPS.setdefault(own, name)
    if not _declaring_builtins:
        return _complete(name)
    return entry


def _complete(name):
    """Build the entry's derivative templates (its partials as operator programs); a
    partial using a function no operator imports is an error, and the entry is removed."""
    from .sympy_import import template
    entry = ELEMENTWISE[name]
    try:
        templates = tuple(template(p) for p in entry.partials)
    except GraphError as err:
        unregister(name)
        raise GraphError(f"operator {name!r} is incomplete: its derivative {err}") from None
    entry = ELEMENTWISE[name] = Elementwise(**{**entry.__dict__, "templates": templates})
    for add, _ in _listeners:
        add(entry)
    return entry


# The built-in entries below may use each other in any order (pow's partial uses log):
# they are completed together once all are declared, at the end of this module.
_declaring_builtins = True


def unregister(name: str) -> None:
    """Remove an operator (for tests that declare one of their own)."""
    entry = ELEMENTWISE.pop(name)
    if entry.sympy is not None and SYMPY_OPS.get(entry.sympy) == name:
        del SYMPY_OPS[entry.sympy]
    for _, remove in _listeners:
        if remove is not None and entry.templates:
            remove(entry)


def kind_of(op: str) -> str:
    """What the scheduler and lowering dispatch on: "leaf" (input, const), "elementwise",
    or a structured operator's kind ("reduction", "view", "contraction")."""
    if op in ELEMENTWISE:
        return "elementwise"
    if op in STRUCTURED:
        return STRUCTURED[op].kind
    if op in ("input", "const", "array"):
        return "leaf"
    raise GraphError(f"unknown operator {op!r}")


def _sigmoid(x):
    # numerically stable on both tails
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _heaviside(x, h0):
    return np.heaviside(x, h0).astype(np.result_type(x, h0), copy=False)


# ---- masks that derivatives are made of (PyTorch's conventions at ties, zeros, NaN) -------
# Each is a SymPy function of its own, lowered by a rule of the same name in lower.py.
class step(sp.Function):
    """relu'(a): 0 where a ≤ 0, 1 elsewhere (NaN included)."""
    nargs = 1


class tie(sp.Function):
    """∂max(a, b)/∂a: 0 where a < b, 1/2 where a = b, 1 elsewhere (NaN included)."""
    nargs = 2


class xmul(sp.Function):
    """a·b, but 0 where a = 0 (so 0·inf is 0): b·a^(b−1) at b = 0."""
    nargs = 2


class pow_log(sp.Function):
    """log(a), but 0 where a = 0 and b ≥ 0: ∂a^b/∂b there is 0 in PyTorch."""
    nargs = 2


# How a mask reads in the J and P dumps: the textbook formula it refines at ties and NaN.
READABLE = {step: lambda a: sp.Heaviside(a, 0), tie: lambda a, b: sp.Heaviside(a - b),
            xmul: lambda a, b: a * b, pow_log: lambda a, b: sp.log(a)}


def readable(expr):
    """``expr`` with the masks above written as the formulas they refine (for display)."""
    for cls in {type(f) for f in expr.atoms(sp.Function)} & READABLE.keys():
        expr = expr.replace(cls, READABLE[cls])
    return expr


def _masked(values, mask, other):
    return np.where(mask, other, values)


elementwise("step", step(A), lambda a: np.where(np.asarray(a) <= 0, 0.0, 1.0).astype(
    np.asarray(a).dtype), partials=(sp.S.Zero,), torch=None, public=False)
elementwise("tie", tie(A, B), lambda a, b: np.where(
    np.asarray(a) < b, 0.0, np.where(np.asarray(a) == b, 0.5, 1.0)).astype(
        np.result_type(a, b)), partials=(sp.S.Zero, sp.S.Zero), torch=None, public=False)
elementwise("xmul", xmul(A, B), lambda a, b: _masked(np.multiply(a, b), np.asarray(a) == 0, 0),
            partials=(B, A), torch=None, public=False)
elementwise("pow_log", pow_log(A, B), lambda a, b: _masked(
    np.log(a), (np.asarray(a) == 0) & (np.asarray(b) >= 0), 0),
    partials=(1 / A, sp.S.Zero), torch=None, public=False, domain="positive")


# ---- arithmetic -------------------------------------------------------------
elementwise("add", A + B, np.add)
elementwise("sub", A - B, np.subtract)
elementwise("mul", A * B, np.multiply)
# ∂/∂b as −(a/b)/b, not −a/b²: b² underflows for |b| < 1.5e-154 where the quotient does
# not (PyTorch writes it so too)
elementwise("div", A / B, np.divide, partials=(1 / B, -(OUT / B)), domain="positive")
elementwise("neg", -A, np.negative)
# d/da a**b written as b*a**(b-1), not sympy's a**b*b/a, so x**2 at x = 0 has slope 0.
# At 0⁰ PyTorch's slopes are 0 and 0 (not b·0^(b−1) = 0·inf and 1·log 0): the partials
# use the masked helpers above, as PyTorch masks its formulas.
elementwise("pow", A**B, np.power, partials=(xmul(B, A ** (B - 1)), OUT * pow_log(A, B)),
            grad_fn="PowBackward0", domain="positive")
# ---- transcendental ---------------------------------------------------------
elementwise("exp", sp.exp(A), np.exp, partials=(OUT,))
elementwise("log", sp.log(A), np.log, domain="positive")
elementwise("sqrt", sp.sqrt(A), np.sqrt, partials=(1 / (2 * OUT),), domain="positive")
elementwise("sin", sp.sin(A), np.sin)
elementwise("cos", sp.cos(A), np.cos)
elementwise("tan", sp.tan(A), np.tan, partials=(1 + OUT**2,), domain="small")
elementwise("tanh", sp.tanh(A), np.tanh, partials=(1 - OUT**2,))
elementwise("sigmoid", 1 / (1 + sp.exp(-A)), _sigmoid, partials=(OUT * (1 - OUT),))
elementwise("sinh", sp.sinh(A), np.sinh)
elementwise("cosh", sp.cosh(A), np.cosh)
elementwise("asin", sp.asin(A), np.arcsin, partials=(1 / sp.sqrt(1 - A**2),), domain="unit")
elementwise("acos", sp.acos(A), np.arccos, partials=(-1 / sp.sqrt(1 - A**2),), domain="unit")
elementwise("atan", sp.atan(A), np.arctan)
# atan2(a, b): the angle of the point (b, a), as numpy and PyTorch order the operands
# Its slopes b/(a² + b²) and −a/(a² + b²) are 0 at the origin in PyTorch (not 0·inf = nan)
elementwise("atan2", sp.atan2(A, B), np.arctan2,
            partials=(xmul(B, 1 / (A**2 + B**2)), xmul(-A, 1 / (A**2 + B**2))))
elementwise("asinh", sp.asinh(A), np.arcsinh, partials=(1 / sp.sqrt(A**2 + 1),))
elementwise("acosh", sp.acosh(A), np.arccosh, partials=(1 / sp.sqrt(A**2 - 1),),
            domain="above1")
elementwise("atanh", sp.atanh(A), np.arctanh, partials=(1 / (1 - A**2),), domain="unit")
elementwise("erf", sp.erf(A), np.vectorize(math.erf, otypes=[float]))
elementwise("erfc", sp.erfc(A), np.vectorize(math.erfc, otypes=[float]))
# accurate near 0 (log1p(1e-20) is 1e-20, log(1 + 1e-20) is 0): the C library's own
elementwise("log1p", log1p(A), np.log1p, partials=(1 / (A + 1),), domain="positive")
elementwise("expm1", expm1(A), np.expm1, partials=(OUT + 1,))
elementwise("log2", log2(A), np.log2, partials=(1 / (A * math.log(2)),), domain="positive")
elementwise("log10", log10(A), np.log10, partials=(1 / (A * math.log(10)),),
            domain="positive")
# hypot(a, b) = √(a² + b²) without overflow or underflow in the squares
elementwise("hypot", hypot(A, B), np.hypot, partials=(A / OUT, B / OUT))
elementwise("square", A**2, np.square)
elementwise("reciprocal", 1 / A, np.reciprocal, partials=(-(OUT * OUT),), domain="positive")


class softplus(sp.Function):
    """log(1 + eᵃ), and a itself above 20 (PyTorch's threshold): no overflow in eᵃ."""
    nargs = 1


# derivative σ(a); PyTorch's is exactly 1 above the threshold, σ(a) is 1 − e⁻ᵃ there
elementwise("softplus", softplus(A), lambda a: np.where(
    np.asarray(a) > 20, a, np.log1p(np.exp(np.minimum(a, 20)))),
    partials=(1 / (1 + sp.exp(-A)),), torch=None, libm=None)
# ---- rounding: flat almost everywhere, so their derivatives are 0 (as in PyTorch) ---------


class stop_gradient(sp.Function):
    """a itself; its derivative is 0."""
    nargs = 1


class rint(sp.Function):
    """Round half to even, as numpy's round and PyTorch's round do."""
    nargs = 1


elementwise("floor", sp.floor(A), np.floor, partials=(sp.S.Zero,))
elementwise("ceil", sp.ceiling(A), np.ceil, partials=(sp.S.Zero,), libm="ceil")
elementwise("round", rint(A), np.round, partials=(sp.S.Zero,), libm="rint")
# ---- piecewise ----------------------------------------------------------------
# Derivatives at ties and NaN follow PyTorch: relu'(0) = 0 and relu'(nan) = 1,
# |x|'(0) = |x|'(nan) = 0, maximum/minimum split a tie in half and pass a NaN to both.
elementwise("relu", sp.Max(A, 0), lambda x: np.maximum(x, 0).astype(np.asarray(x).dtype),
            partials=(step(A),))
elementwise("abs", sp.Abs(A), np.abs, partials=(sp.sign(A),))
elementwise("maximum", sp.Max(A, B), np.maximum, partials=(tie(A, B), tie(B, A)))
elementwise("minimum", sp.Min(A, B), np.minimum, partials=(tie(B, A), tie(A, B)))
# sign(nan) is 0, as in PyTorch (numpy and JAX give nan)
elementwise("sign", sp.sign(A), lambda x: np.where(np.isnan(x), 0, np.sign(x)).astype(
    np.asarray(x).dtype), partials=(sp.S.Zero,))
# heaviside(x, h0): the step the partials above are made of; flat almost everywhere.
# (PyTorch has torch.heaviside but no derivative for it: not offered as a Tensor method)
elementwise("heaviside", sp.Heaviside(A, B), _heaviside, partials=(sp.S.Zero, sp.S.Zero),
            torch=None)

# ---- comparisons and selection ----------------------------------------------------------
# A comparison is a 0/1 mask in the operands' dtype (numpy's bool arrays, as numbers): it
# multiplies, sums and selects like one.  Ordered, as numpy's: NaN compares false, except
# in ne.  Flat, so no gradient flows through a comparison (none does in PyTorch either).
# Each is a SymPy function of its own (a Piecewise would be re-analysed by SymPy at every
# construction), lowered by lower.py's rule of the same name.
def _mask_class(name, doc, nargs=2):
    return type(name, (sp.Function,), {"nargs": nargs, "__doc__": doc})


lt = _mask_class("lt", "1 where a < b, else 0 (0 where either is NaN)")
le = _mask_class("le", "1 where a ≤ b, else 0")
gt = _mask_class("gt", "1 where a > b, else 0")
ge = _mask_class("ge", "1 where a ≥ b, else 0")
eq = _mask_class("eq", "1 where a = b, else 0")
ne = _mask_class("ne", "1 where a ≠ b (NaN included), else 0")
logical_and = _mask_class("logical_and", "1 where a and b are nonzero (NaN is true)")
logical_or = _mask_class("logical_or", "1 where a or b is nonzero")
logical_not = _mask_class("logical_not", "1 where a is zero", 1)
where = _mask_class("where", "b where a is nonzero (NaN included), else c", 3)

for _cls, _numpy in ((lt, np.less), (le, np.less_equal), (gt, np.greater),
                     (ge, np.greater_equal), (eq, np.equal), (ne, np.not_equal),
                     (logical_and, np.logical_and), (logical_or, np.logical_or)):
    elementwise(_cls.__name__, _cls(A, B), _numpy, partials=(sp.S.Zero, sp.S.Zero),
                torch=None, libm=None)
elementwise("logical_not", logical_not(A), np.logical_not, partials=(sp.S.Zero,), torch=None,
            libm=None)
# where(c, a, b): a where c is nonzero, else b; the adjoint goes to the branch chosen
elementwise("where", where(A, B, C), lambda c, a, b: np.where(np.asarray(c) != 0, a, b),
            partials=(sp.S.Zero, ne(A, 0), eq(A, 0)), torch=None, libm=None)
# clamp_min(a, lo) = max(a, lo) with PyTorch's slopes: 1 for a where a ≥ lo (the bound
# included: no tie split as in maximum), 1 for lo below it; clamp_max likewise
elementwise("clamp_min", sp.Max(A, B), np.maximum, partials=(ge(A, B), lt(A, B)))
elementwise("clamp_max", sp.Min(A, B), np.minimum, partials=(le(A, B), gt(A, B)))
# √a for a 2-norm: its slope at 0 is 0, not inf (PyTorch's vector_norm at the origin)
elementwise("norm_root", sp.sqrt(A), np.sqrt, partials=(where(eq(OUT, 0), 0, 1 / (2 * OUT)),),
            torch=None, public=False, domain="positive", libm=None)

# ---- data movement that fuses like arithmetic -----------------------------------
# broadcast: the operand read with stride 0 on new or size-1 axes (shape is a parameter).
elementwise("broadcast", A, lambda a: a, partials=(sp.S.One,), torch=None, public=False)
elementwise("copy", A, np.copy, partials=(sp.S.One,), torch=None, public=False)
# the value, with no derivative (JAX's stop_gradient, PyTorch's detach)
elementwise("stop_gradient", stop_gradient(A), lambda a: a, partials=(sp.S.Zero,), torch=None,
            libm=None)
# a bool input read as 0/1 in the graph's dtype (the load converts; Graph._operand inserts
# it): a mask, with no derivative
elementwise("as_mask", stop_gradient(A), lambda a: a, partials=(sp.S.Zero,), torch=None,
            libm=None, public=False)


# ---- shapes ---------------------------------------------------------------------
def broadcast_shapes(*shapes: tuple) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        raise ShapeError(
            f"shapes {' and '.join(map(str, shapes))} do not broadcast: trailing "
            "dimensions must be equal or 1") from None


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
    """A structured operator.  ``kind`` is what the scheduler and lowering dispatch on:

    * "reduction" — accumulates its operand over ``params = (axes, keepdims)``, fused
      into the loop that produces the operand;
    * "view" — new strides over the operand's buffer: ``view(strides, shape, params)``;
    * "contraction" — a product of two operands (a loop nest, or BLAS);
    * "assemble" — a new buffer made of its operands' values placed in regions of it
      (``regions(shapes, params)``: one index spec per operand, see ``basic_index``),
      the rest filled with ``fill(params)`` (None: the regions cover it);
    * "gather" — reads (``gather``) or accumulates into (``scatter_add``) positions given
      by integer index operands;
    * "scan" — a running sum along ``params[0]``, the axis;
    * "loop" — a body graph iterated over a carry (``loops.py``: ``scan``, ``fori_loop``);
      ``params[0]`` is the ``Body``.

    How it reads, beside what it does: ``show(x, params, shapes, tex)`` writes the forward
    application on operands named ``x``; ``rule(slot, P, x, params, shapes, tex)`` writes
    the adjoint ``P·J_{x[slot]→out}`` that operand receives from the output's adjoint ``P``
    (plain text, or LaTeX with ``tex=True``)."""
    name: str
    kind: str
    shape: Callable      # (operand shapes, params) -> output shape
    numpy: Callable      # (operand arrays, params) -> array
    vjp: Callable        # (adjoint, operands, out, params) -> one adjoint per operand
    show: Callable
    rule: Callable
    view: Callable | None = None      # (offset, strides, out shape, params) -> (offset, strides)
    regions: Callable | None = None
    fill: Callable | None = None
    # (tangents, operands, out, params) -> the tangent of out (forward mode); None: the
    # operator is linear in its float operands, so it applies to their tangents
    jvp: Callable | None = None


def structured(name, kind, shape, numpy, vjp, show, rule, view=None, regions=None, fill=None,
               jvp=None):
    if kind not in ("reduction", "view", "contraction", "assemble", "gather", "scan", "loop"):
        raise GraphError(f"structured operator {name!r}: unknown kind {kind!r}")
    if kind == "view" and view is None:
        raise GraphError(f"view operator {name!r} needs its stride rule (view=)")
    if kind == "assemble" and (regions is None or fill is None):
        raise GraphError(f"operator {name!r} needs regions= and fill=")
    STRUCTURED[name] = Structured(name, kind, shape, numpy, vjp, show, rule, view, regions,
                                  fill, jvp)


def _kept(shape, axes) -> tuple:
    """``shape`` reduced over ``axes`` with the reduced dims kept as 1."""
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


def _sum_shape(shapes, params):
    axes, keepdims = params
    (shape,) = shapes
    if keepdims:
        return _kept(shape, axes)
    return tuple(n for i, n in enumerate(shape) if i not in axes)


def _sum_vjp(adjoint, args, out, params):
    axes, keepdims = params
    shape = args[0].shape
    return [adjoint.reshape(_kept(shape, axes)).broadcast_to(shape)]


def _matmul_shape(shapes, params):
    (m, k), (k2, n) = shapes
    if k != k2:
        raise ShapeError(f"matmul of {shapes[0]} and {shapes[1]}: inner dimensions "
                         f"{k} and {k2} differ")
    return (m, n)


def _transpose_shape(shapes, params):
    (shape,) = shapes
    return tuple(shape[p] for p in params[0])


def contiguous_strides(shape: tuple) -> tuple:
    """Row-major strides, in elements."""
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _inverse(perm):
    return tuple(int(i) for i in np.argsort(perm))


# ---- how structured operators read (text, or LaTeX) ----------------------------------------
def written_call(name, args, tex, sub=""):
    if tex:
        return rf"\operatorname{{{name}}}{sub}\left({', '.join(args)}\right)"
    return f"{name}({', '.join(args)})"


def _t(x, tex):
    return rf"{x}^{{\mathsf{{T}}}}" if tex else f"{x}ᵀ"


def _sum_show(x, params, shapes, tex):
    axes, keepdims = params
    if len(axes) == len(shapes[0]) and not keepdims:
        return written_call("sum", x, tex)
    axis = axes[0] if len(axes) == 1 else axes
    if tex:
        return written_call("sum", x, tex, rf"_{{\text{{axis}}={axis}}}")
    return written_call("sum", [*x, f"axis={axis}"] + (["keepdims=True"] if keepdims else []), tex)


def _matmul_rule(slot, P, x, params, shapes, tex):
    """P·J for ``a @ b`` at the operands' own ranks (1-D ones as numpy treats them)."""
    a, b = x
    at, bt = (len(s) for s in shapes)
    at_ = _t(a, tex) if at == 2 else a
    times = r" \, " if tex else " @ "
    if at == 1 and bt == 1:                  # a·b, a scalar
        return (rf"{P} \cdot {b}" if tex else f"{P}·{b}") if slot == 0 else \
            (rf"{P} \cdot {a}" if tex else f"{P}·{a}")
    if slot == 0:
        if bt == 1:                          # A @ b: P_A = outer(P, b)
            return written_call("outer", [P, b], tex)
        return f"{b}{times}{P}" if at == 1 else f"{P}{times}{_t(b, tex)}"
    if at == 1:                              # a @ B: P_B = outer(a, P)
        return written_call("outer", [a, P], tex)
    return f"{at_}{times}{P}"


structured("sum", "reduction", _sum_shape,
           lambda args, p: np.sum(args[0], axis=p[0], keepdims=p[1]),
           _sum_vjp, _sum_show,
           lambda slot, P, x, p, shapes, tex: written_call("broadcast", [P, str(shapes[0])], tex))
structured("reshape", "view", lambda shapes, p: p[0],
           lambda args, p: np.reshape(args[0], p[0]),
           lambda adj, args, out, p: [adj.reshape(args[0].shape)],
           lambda x, p, shapes, tex: written_call("reshape", [*x, str(p[0])], tex),
           lambda slot, P, x, p, shapes, tex: written_call("reshape", [P, str(shapes[0])], tex),
           view=lambda offset, strides, shape, p: (offset, contiguous_strides(shape)))
structured("transpose", "view", _transpose_shape,
           lambda args, p: np.transpose(args[0], p[0]),
           lambda adj, args, out, p: [adj.transpose(_inverse(p[0]))],
           lambda x, p, shapes, tex: _t(x[0], tex) if p[0] == (1, 0) else
           written_call("transpose", [x[0], str(p[0])], tex),
           lambda slot, P, x, p, shapes, tex: _t(P, tex) if p[0] == (1, 0) else
           written_call("transpose", [P, str(_inverse(p[0]))], tex),
           view=lambda offset, strides, shape, p: (offset, tuple(strides[i] for i in p[0])))


# ---- indexing, and the operators that place values into a new tensor ------------------------
# A basic index (numpy's ints, slices, None, ...) is a spec: one item per result-forming
# piece, ("slice", start, step, count) and ("int", i) each taking one axis of the operand,
# ("new",) adding an axis of size 1.  Applied to strides it is a view (an offset and new
# strides, no copy); applied to an output buffer it is the region an operand is written to.
def full_slice(n):
    return ("slice", 0, 1, n)


def is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def basic_index(shape: tuple, index) -> tuple:
    """numpy's basic index over ``shape`` as a spec (every axis covered), or IndexError."""
    index = index if isinstance(index, tuple) else (index,)
    if sum(1 for it in index if it is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    taken = sum(1 for it in index if it is not None and it is not Ellipsis)
    if taken > len(shape):
        raise IndexError(f"too many indices: {taken} for a tensor with {len(shape)} dims")
    spec, d = [], 0
    for it in index:
        if it is Ellipsis:
            for _ in range(len(shape) - taken):
                spec.append(full_slice(shape[d]))
                d += 1
        elif it is None:
            spec.append(("new",))
        elif isinstance(it, slice):
            if not all(v is None or is_int(v) for v in (it.start, it.stop, it.step)):
                raise IndexError(f"slice {it} must have int (or None) start, stop and step")
            if it.step == 0:
                raise IndexError("slice step cannot be zero")
            start, stop, step = it.indices(shape[d])
            count = len(range(start, stop, step))
            spec.append(("slice", start, step, count) if count else ("slice", 0, 1, 0))
            d += 1
        elif is_int(it):
            n = shape[d]
            if not -n <= it < n:
                raise IndexError(f"index {int(it)} is out of bounds for axis {d} with size {n}")
            spec.append(("int", int(it) % n))
            d += 1
        else:
            raise IndexError(f"cannot index with {type(it).__name__} {it!r}: use ints, slices, "
                             "None, ..., or integer arrays")
    spec.extend(full_slice(shape[k]) for k in range(d, len(shape)))
    return tuple(spec)


def is_identity(spec, shape) -> bool:
    return len(spec) == len(shape) and all(it == full_slice(n) for it, n in zip(spec, shape))


def numpy_index(spec) -> tuple:
    """The spec as a numpy index (for the reference evaluation)."""
    out = []
    for it in spec:
        if it[0] == "new":
            out.append(None)
        elif it[0] == "int":
            out.append(it[1])
        else:
            _, start, step, count = it
            stop = start + step * count
            out.append(slice(start, None if stop < 0 else stop, step))
    return tuple(out)


def index_shape(shapes, params):
    return tuple(1 if it[0] == "new" else it[3] for it in params[0] if it[0] != "int")


def _index_view(offset, strides, shape, params):
    out, d = [], 0
    for it in params[0]:
        if it[0] == "new":
            out.append(0)
            continue
        offset += it[1] * strides[d]
        if it[0] == "slice":
            out.append(it[2] * strides[d])
        d += 1
    return offset, tuple(out)


def index_text(spec, shape=None) -> str:
    """``1:5, 0, None``: the spec as it would be written (positive starts; ``:`` for a
    whole axis of ``shape``, the indexed tensor's, and none for trailing ones)."""
    parts, whole = [], iter(shape) if shape is not None else None
    for it in spec:
        if whole is not None and it[0] != "new" and it == full_slice(next(whole)):
            parts.append(":")
            continue
        if it[0] == "new":
            parts.append("None")
        elif it[0] == "int":
            parts.append(str(it[1]))
        else:
            _, start, step, count = it
            stop = start + step * count
            stop = "" if stop < 0 else str(stop)
            parts.append(f"{start}:{stop}" + (f":{step}" if step != 1 else ""))
    while len(parts) > 1 and parts[-1] == ":":
        parts.pop()
    return ", ".join(parts)


def _subscript(x, inner, tex):
    return rf"{x}\left[{inner}\right]" if tex else f"{x}[{inner}]"


def _indexed(x, spec, tex, shape=None):
    inner = index_text(spec, shape).replace("None", r"\text{None}" if tex else "None")
    return _subscript(x, inner, tex)


# x[spec]: a view.  Its adjoint is P placed in a zero tensor of x's shape (embed).
structured("index", "view", index_shape,
           lambda args, p: args[0][numpy_index(p[0])],
           lambda adj, args, out, p: [adj.apply("embed", params=(args[0].shape, p[0]))],
           lambda x, p, shapes, tex: _indexed(x[0], p[0], tex, shapes[0]),
           lambda slot, P, x, p, shapes, tex: written_call(
               "embed", [P, str(shapes[0]), f"[{index_text(p[0], shapes[0])}]"], tex),
           view=_index_view)


def _embedded(args, p):
    out = np.zeros(p[0], dtype=np.asarray(args[0]).dtype)
    for a, spec in zip(args, p[1:]):
        out[numpy_index(spec)] = a
    return out


def _embed_fill(p):
    """0 around the pieces; none where they cover the whole result (regions are disjoint)."""
    covered = sum(math.prod(index_shape([p[0]], (spec,))) for spec in p[1:])
    return None if covered == math.prod(p[0]) else 0.0


# embed(a, b, …; shape, spec_a, spec_b, …): zeros of ``shape`` with each operand at its
# region (the regions are disjoint); operand k's adjoint is P[spec_k].  One operand is
# indexing's adjoint; several are the adjoints of x[0], x[1], … read one by one, joined.
structured("embed", "assemble", lambda shapes, p: p[0], _embedded,
           lambda adj, args, out, p: [adj.apply("index", params=(spec,)) for spec in p[1:]],
           lambda x, p, shapes, tex: written_call(
               "embed", [*x, str(p[0]), *[f"[{index_text(spec, p[0])}]" for spec in p[1:]]],
               tex),
           lambda slot, P, x, p, shapes, tex: _indexed(P, p[1 + slot], tex, p[0]),
           regions=lambda shapes, p: list(p[1:]), fill=_embed_fill)


def _concat_regions(shapes, params):
    axis, = params
    specs, start = [], 0
    for s in shapes:
        specs.append(tuple(("slice", start, 1, n) if d == axis else full_slice(n)
                           for d, n in enumerate(s)))
        start += s[axis]
    return specs


def _concat_shape(shapes, params):
    axis, = params
    first = shapes[0]
    for s in shapes[1:]:
        if len(s) != len(first) or any(a != b for d, (a, b) in enumerate(zip(s, first))
                                       if d != axis):
            raise ShapeError(f"concatenate along axis {axis}: shapes "
                             f"{', '.join(map(str, shapes))} differ off that axis")
    return first[:axis] + (sum(s[axis] for s in shapes),) + first[axis + 1:]


# concatenate(a, b, …; axis): each operand's adjoint is its block of P.
structured("concatenate", "assemble", _concat_shape,
           lambda args, p: np.concatenate(args, axis=p[0]),
           lambda adj, args, out, p: [adj.apply("index", params=(spec,)) for spec in
                                      _concat_regions([a.shape for a in args], p)],
           lambda x, p, shapes, tex: written_call("concatenate", [*x, f"axis={p[0]}"], tex),
           lambda slot, P, x, p, shapes, tex: _indexed(P, _concat_regions(shapes, p)[slot], tex,
                                                       _concat_shape(shapes, p)),
           regions=_concat_regions, fill=lambda p: None)


def _pad_regions(shapes, params):
    return [tuple(("slice", lo, 1, n) for (lo, _), n in zip(params[0], shapes[0]))]


# pad(a, widths, value): a inside a border of ``value``; its adjoint is P's interior.
structured("pad", "assemble",
           lambda shapes, p: tuple(lo + n + hi for (lo, hi), n in zip(p[0], shapes[0])),
           lambda args, p: np.pad(args[0], p[0], constant_values=p[1]),
           lambda adj, args, out, p: [adj.apply("index", params=(
               _pad_regions([args[0].shape], p)[0],))],
           lambda x, p, shapes, tex: written_call("pad", [x[0], str(p[0]), f"{p[1]:g}"], tex),
           lambda slot, P, x, p, shapes, tex: _indexed(
               P, _pad_regions(shapes, p)[0], tex,
               tuple(lo + n + hi for (lo, hi), n in zip(p[0], shapes[0]))),
           regions=_pad_regions, fill=lambda p: p[1],
           # affine, not linear: the fill value is a constant, its tangent 0
           jvp=lambda t, args, out, p: t[0].apply("pad", params=(p[0], 0.0)))


# gather(x, i₀, …, i_{k−1}): out[b, r] = x[i₀[b], …, i_{k−1}[b], r], the index arrays
# broadcast together to b's shape (numpy's x[i₀, …] on the leading axes).  Indices are
# checked before they are read: constants when the node is made, inputs at every call.
# Its adjoint scatters P back, adding where an index repeats; scatter_add's is a gather.
def _gather_shape(shapes, params):
    x, *index = shapes
    if len(index) > len(x):
        raise ShapeError(f"{len(index)} index arrays for a tensor with {len(x)} dims")
    return broadcast_shapes(*index) + tuple(x[len(index):])


def _scatter_shape(shapes, params):
    p, *index = shapes
    (shape,) = params
    expect = broadcast_shapes(*index) + tuple(shape[len(index):])
    if tuple(p) != expect:
        raise ShapeError(f"scatter_add of shape {p} into {shape}: the indices want {expect}")
    return shape


def _scatter_numpy(args, params):
    p, *index = args
    out = np.zeros(params[0], dtype=np.asarray(p).dtype)
    np.add.at(out, tuple(np.asarray(i) for i in index), p)
    return out


structured("gather", "gather", _gather_shape,
           lambda args, p: np.asarray(args[0])[tuple(np.asarray(i) for i in args[1:])],
           lambda adj, args, out, p: [adj.apply("scatter_add", *args[1:],
                                                params=(args[0].shape,))]
           + [None] * (len(args) - 1),
           lambda x, p, shapes, tex: _subscript(x[0], ", ".join(x[1:]), tex),
           lambda slot, P, x, p, shapes, tex: written_call(
               "scatter_add", [P, *x[1:], str(shapes[0])], tex))
structured("scatter_add", "gather", _scatter_shape, _scatter_numpy,
           lambda adj, args, out, p: [adj.apply("gather", *args[1:])] + [None] * (len(args) - 1),
           lambda x, p, shapes, tex: written_call(
               "scatter_add", [*x, str(p[0])], tex),
           lambda slot, P, x, p, shapes, tex: _subscript(P, ", ".join(x[1:]), tex))


def _ties(x, out, axes):
    """1 where an entry of ``x`` equals its amax/amin ``out``, else 0."""
    return x.apply("eq", out.reshape(_kept(x.shape, axes)).broadcast_to(x.shape))


def _extreme_vjp(adjoint, args, out, params):
    """amax/amin: the adjoint goes to the entries equal to the result, split evenly among
    ties (PyTorch's amax/amin)."""
    axes, keepdims = params
    x = args[0]
    mask = _ties(x, out, axes)
    share = adjoint.reshape(_kept(x.shape, axes)) / mask.sum(axes, keepdims=True)
    return [share.broadcast_to(x.shape) * mask]


def _extreme_jvp(tangents, args, out, params):
    """The mean of the tangents at the entries equal to the result (J of the VJP above)."""
    axes, keepdims = params
    mask = _ties(args[0], out, axes)
    return (tangents[0] * mask).sum(axes, keepdims=keepdims) / mask.sum(axes, keepdims=keepdims)


def _extreme(name, numpy):
    structured(name, "reduction", _sum_shape,
               lambda args, p: numpy(args[0], axis=p[0], keepdims=p[1]), _extreme_vjp,
               lambda x, p, shapes, tex: _sum_show(x, p, shapes, tex).replace("sum", name),
               lambda slot, P, x, p, shapes, tex: (
                   rf"\frac{{{P}}}{{\#\text{{ties}}}} \cdot \left[{x[0]}="
                   rf"\operatorname{{{name}}}\right]" if tex else
                   f"broadcast({P}/ties, {shapes[0]})·[{x[0]} = {name}]"),
               jvp=_extreme_jvp)


_extreme("amax", np.amax)
_extreme("amin", np.amin)

def _prod_partials(x, out, params):
    """∂Π/∂x_i = Π_{j≠i} x_j: out/x_i where x_i ≠ 0; where x_i = 0, the product of the
    other entries if it is the only zero, else 0 (PyTorch's prod backward)."""
    axes, keepdims = params
    zero = x.apply("eq", 0.0)
    safe = zero.apply("where", 1.0, x)              # no division by zero, in any order
    others = safe.apply("prod", params=(axes, True))
    alone = zero.sum(axes, keepdims=True).apply("eq", 1.0)
    return zero.apply("where", others * alone,
                      out.reshape(_kept(x.shape, axes)).broadcast_to(x.shape) / safe)


def _prod_vjp(adjoint, args, out, params):
    axes, keepdims = params
    return [adjoint.reshape(_kept(args[0].shape, axes)).broadcast_to(args[0].shape)
            * _prod_partials(args[0], out, params)]


def _prod_jvp(tangents, args, out, params):
    axes, keepdims = params
    return (tangents[0] * _prod_partials(args[0], out, params)).sum(axes, keepdims=keepdims)


structured("prod", "reduction", _sum_shape,
           lambda args, p: np.prod(args[0], axis=p[0], keepdims=p[1]), _prod_vjp,
           lambda x, p, shapes, tex: _sum_show(x, p, shapes, tex).replace("sum", "prod"),
           lambda slot, P, x, p, shapes, tex: (
               rf"\operatorname{{broadcast}}\left({P}\right) \cdot \prod_{{j \neq i}} {x[0]}_j"
               if tex else f"broadcast({P}, {shapes[0]})·Π_(j≠i) {x[0]}_j"),
           jvp=_prod_jvp)


def _cumsum_show(x, p, shapes, tex):
    return written_call("cumsum", [x[0], f"axis={p[0]}"], tex)


# cumsum along an axis: its adjoint is the reversed cumulative sum of P.
structured("cumsum", "scan", lambda shapes, p: shapes[0],
           lambda args, p: np.cumsum(args[0], axis=p[0]),
           lambda adj, args, out, p: [adj.flip(p[0]).apply("cumsum", params=p).flip(p[0])],
           _cumsum_show,
           lambda slot, P, x, p, shapes, tex: written_call(
               "flip", [_cumsum_show([written_call("flip", [P, f"axis={p[0]}"], tex)], p,
                                     shapes, tex), f"axis={p[0]}"], tex))

# Bilinear: P_a = P_c·bᵀ, P_b = aᵀ·P_c.
structured("matmul", "contraction", _matmul_shape,
           lambda args, p: np.matmul(args[0], args[1]),
           lambda adj, args, out, p: [adj @ args[1].transpose((1, 0)),
                                      args[0].transpose((1, 0)) @ adj],
           lambda x, p, shapes, tex: (r" \, " if tex else " @ ").join(x),
           _matmul_rule,
           jvp=lambda t, args, out, p: _plus(t[0] @ args[1] if t[0] is not None else None,
                                             args[0] @ t[1] if t[1] is not None else None))


def _plus(a, b):
    return b if a is None else a if b is None else a + b


def evaluate(op: str, args: list, params: tuple, shape: tuple, dtype) -> np.ndarray:
    """Numpy reference value of one operator application."""
    if op == "const":
        return np.asarray(params[0], dtype=dtype)
    if op == "array":
        return params[0].value
    if op in ELEMENTWISE:
        with np.errstate(all="ignore"):
            value = ELEMENTWISE[op].numpy(*[np.asarray(a, dtype=dtype) for a in args])
        return np.broadcast_to(np.asarray(value, dtype=dtype), shape).copy()
    with np.errstate(all="ignore"):
        return np.asarray(STRUCTURED[op].numpy(args, params), dtype=dtype)


for _name in list(ELEMENTWISE):
    _complete(_name)
_declaring_builtins = False
