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
    if op in ("input", "const"):
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

# ---- data movement that fuses like arithmetic -----------------------------------
# broadcast: the operand read with stride 0 on new or size-1 axes (shape is a parameter).
elementwise("broadcast", A, lambda a: a, partials=(sp.S.One,), torch=None, public=False)
elementwise("copy", A, np.copy, partials=(sp.S.One,), torch=None, public=False)
# the value, with no derivative (JAX's stop_gradient, PyTorch's detach)
elementwise("stop_gradient", stop_gradient(A), lambda a: a, partials=(sp.S.Zero,), torch=None,
            libm=None)


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
    * "contraction" — a product of two operands (a loop nest, or BLAS).

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
    view: Callable | None = None


def structured(name, kind, shape, numpy, vjp, show, rule, view=None):
    if kind not in ("reduction", "view", "contraction"):
        raise GraphError(f"structured operator {name!r}: unknown kind {kind!r}")
    if kind == "view" and view is None:
        raise GraphError(f"view operator {name!r} needs its stride rule (view=)")
    STRUCTURED[name] = Structured(name, kind, shape, numpy, vjp, show, rule, view)


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
           view=lambda strides, shape, p: contiguous_strides(shape))
structured("transpose", "view", _transpose_shape,
           lambda args, p: np.transpose(args[0], p[0]),
           lambda adj, args, out, p: [adj.transpose(_inverse(p[0]))],
           lambda x, p, shapes, tex: _t(x[0], tex) if p[0] == (1, 0) else
           written_call("transpose", [x[0], str(p[0])], tex),
           lambda slot, P, x, p, shapes, tex: _t(P, tex) if p[0] == (1, 0) else
           written_call("transpose", [P, str(_inverse(p[0]))], tex),
           view=lambda strides, shape, p: tuple(strides[i] for i in p[0]))


def _extreme_vjp(adjoint, args, out, params):
    """amax/amin: the adjoint goes to the entries equal to the result, split evenly among
    ties (PyTorch's amax/amin)."""
    axes, keepdims = params
    x = args[0]
    kept = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
    mask = x.apply("eq", out.reshape(kept).broadcast_to(x.shape))
    share = adjoint.reshape(kept) / mask.sum(axes, keepdims=True)
    return [share.broadcast_to(x.shape) * mask]


def _extreme(name, numpy):
    structured(name, "reduction", _sum_shape,
               lambda args, p: numpy(args[0], axis=p[0], keepdims=p[1]), _extreme_vjp,
               lambda x, p, shapes, tex: _sum_show(x, p, shapes, tex).replace("sum", name),
               lambda slot, P, x, p, shapes, tex: (
                   rf"\frac{{{P}}}{{\#\text{{ties}}}} \cdot \left[{x[0]}="
                   rf"\operatorname{{{name}}}\right]" if tex else
                   f"broadcast({P}/ties, {shapes[0]})·[{x[0]} = {name}]"))


_extreme("amax", np.amax)
_extreme("amin", np.amin)
# Bilinear: P_a = P_c·bᵀ, P_b = aᵀ·P_c.
structured("matmul", "contraction", _matmul_shape,
           lambda args, p: np.matmul(args[0], args[1]),
           lambda adj, args, out, p: [adj @ args[1].transpose((1, 0)),
                                      args[0].transpose((1, 0)) @ adj],
           lambda x, p, shapes, tex: (r" \, " if tex else " @ ").join(x),
           _matmul_rule)


def evaluate(op: str, args: list, params: tuple, shape: tuple, dtype) -> np.ndarray:
    """Numpy reference value of one operator application."""
    if op == "const":
        return np.asarray(params[0], dtype=dtype)
    if op in ELEMENTWISE:
        with np.errstate(all="ignore"):
            value = ELEMENTWISE[op].numpy(*[np.asarray(a, dtype=dtype) for a in args])
        return np.broadcast_to(np.asarray(value, dtype=dtype), shape).copy()
    return np.asarray(STRUCTURED[op].numpy(args, params), dtype=dtype)


for _name in list(ELEMENTWISE):
    _complete(_name)
_declaring_builtins = False
