"""SymPy expressions → graph nodes.

Used for ``Graph.from_sympy`` and to instantiate the operator table's partials
(``J`` templates) on graph nodes.  Iterative (an explicit stack), so an
expression of any depth converts; a SymPy subexpression met twice is one node.
"""
from __future__ import annotations

import numbers

import sympy as sp

from .errors import GraphError


def _as_sympy(root):
    """A SymPy expression, or a number made one.  Text is refused: ``sympify`` would
    ``eval`` it (use the expression parser, ``symgrad.compiler.parse``)."""
    if isinstance(root, sp.Basic):
        return root
    if isinstance(root, numbers.Real) and not isinstance(root, bool):
        return sp.Float(root) if isinstance(root, float) else sp.Integer(int(root))
    raise GraphError(f"expected a SymPy expression, got {type(root).__name__} {root!r}"
                     + ("; text is never evaluated: parse it with symgrad.compiler.parse"
                        if isinstance(root, str) else ""))


class _Tracer:
    """Stands in for a graph while a partial is converted once; what it records is
    replayed on every node the partial is instantiated on (see autodiff.instantiate)."""

    def __init__(self):
        self.program = []

    def _emit(self, step):
        self.program.append(step)
        return ("t", len(self.program) - 1)

    def apply(self, op, *args, params=()):
        return self._emit(("apply", op, args, params))

    def const(self, value, dtype=None):
        return self._emit(("const", value))


def template(partial: sp.Expr):
    """A partial (over the table's symbols a, b, out) as a number, or as a (program,
    result) pair of operator applications over leaves a, b, out."""
    from .ops import A, B, C, OUT
    if partial.is_Number:
        return float(partial)
    # constant subexpressions (2/√π in erf's, log 2 in log2's) are numbers, rounded once
    partial = partial.replace(lambda e: e.is_number and not e.is_Atom,
                              lambda e: sp.Float(float(e), 17))
    tracer = _Tracer()
    leaves = {A: ("leaf", 0), B: ("leaf", 1), C: ("leaf", 2), OUT: ("leaf", 3)}
    result = build([partial], leaves, tracer)[0]
    return tuple(tracer.program), result


def build(exprs, env: dict, apply):
    """Convert ``exprs``; ``env`` maps free symbols to operands, ``apply(op, *args)``
    makes a node (a Graph, or any object with ``.apply`` and ``.const``)."""
    if hasattr(apply, "apply"):
        owner = apply
        apply = owner.apply
        const = owner.const
    else:
        raise TypeError("build needs a graph-like object")
    memo: dict = {}
    exprs = [_as_sympy(r) for r in exprs]
    for root in exprs:
        stack = [(root, False)]
        while stack:
            e, ready = stack.pop()
            if e in memo:
                continue
            if not ready:
                stack.append((e, True))
                stack.extend((a, False) for a in _operands(e) if a not in memo)
                continue
            memo[e] = _convert(e, memo, env, apply, const)
    return [memo[r] for r in exprs]


def _denominator(f):
    """``b**n`` for a factor ``b**-n`` (what a quotient divides by), else None."""
    if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
        return f.base if f.exp == -1 else f.base ** (-f.exp)
    return None


def _operands(e):
    if isinstance(e, sp.Mul):   # a quotient needs its denominators, not their reciprocals
        return tuple(d if d is not None else f for f, d in
                     ((f, _denominator(f)) for f in e.args) if f != -1)
    if isinstance(e, sp.Heaviside):
        return e.args[:1]
    if isinstance(e, sp.Pow) and e.exp == sp.S.Half:
        return (e.base,)
    if isinstance(e, sp.Piecewise):
        return tuple(x for value, cond in e.args
                     for x in (value, cond) if x is not sp.true)
    return e.args


# conditions become the table's 0/1 masks (and Piecewise a chain of where)
_RELATIONS = {sp.StrictLessThan: "lt", sp.LessThan: "le", sp.StrictGreaterThan: "gt",
              sp.GreaterThan: "ge", sp.Equality: "eq", sp.Unequality: "ne",
              sp.And: "logical_and", sp.Or: "logical_or"}


def _piecewise(e, memo, apply, const):
    """Piecewise((v1, c1), (v2, c2), …, (vn, True)) as where(c1, v1, where(c2, v2, …)).
    A piece with no True at the end is NaN where no condition holds, as lambdify has it."""
    pieces = list(e.args)
    if pieces[-1][1] is sp.true:
        acc = memo[pieces.pop()[0]]
    else:
        acc = const(float("nan"))
    for value, cond in reversed(pieces):
        acc = apply("where", memo[cond], memo[value], acc)
    return acc


def _convert(e, memo, env, apply, const):
    if e.is_Symbol:
        if e not in env:
            raise GraphError(f"symbol {e} is not an input: pass it in inputs (or declare it)")
        return env[e]
    if e.is_Atom and e.is_number and e.is_real is False:   # atoms: no recursion
        raise GraphError(f"constant {e} in the expression is not a real number: symgrad "
                         "computes with float32/float64")
    if e.is_Number:
        return const(float(e))
    if e in (sp.pi, sp.E):
        return const(float(e))
    args = [memo[a] for a in _operands(e)]
    if isinstance(e, sp.Add):
        return _chain(apply, "add", args)
    if isinstance(e, sp.Mul):
        return _mul(e, memo, apply, const)
    if isinstance(e, sp.Pow):
        if e.exp == sp.S.Half:
            return apply("sqrt", args[0])
        if e.exp == -1:
            return apply("div", const(1.0), args[0])
        return apply("pow", args[0], args[1])
    if isinstance(e, (sp.Max, sp.Min)):
        return _chain(apply, "maximum" if isinstance(e, sp.Max) else "minimum", args)
    if isinstance(e, sp.Heaviside):
        h0 = e.args[1] if len(e.args) > 1 else sp.S.Half
        return apply("heaviside", args[0], const(float(h0)))
    if isinstance(e, sp.Piecewise):
        return _piecewise(e, memo, apply, const)
    if type(e) in _RELATIONS:
        return _chain(apply, _RELATIONS[type(e)], args)
    if isinstance(e, sp.Not):
        return apply("logical_not", args[0])
    from .ops import SYMPY_OPS
    if type(e) in SYMPY_OPS:
        return apply(SYMPY_OPS[type(e)], *args)
    raise GraphError(f"SymPy function {type(e).__name__} (in {e}) has no symgrad operator; "
                     "supported: + - * / **, "
                     + ", ".join(sorted(f.__name__ for f in SYMPY_OPS))
                     + ", sqrt, Max, Min, Heaviside")


def _chain(apply, op, args):
    """A balanced tree, so a 1000-term sum is depth 10, not 1000."""
    while len(args) > 1:
        args = [apply(op, *args[i:i + 2]) if i + 1 < len(args) else args[i]
                for i in range(0, len(args), 2)]
    return args[0]


def _mul(e, memo, apply, const):
    """x·y/z as mul and div; a −1 coefficient as neg."""
    num, den, negate = [], [], False
    for f in e.args:
        d = _denominator(f)
        if f == -1:
            negate = not negate
        elif d is not None:
            den.append(memo[d])
        else:
            num.append(memo[f])
    out = _chain(apply, "mul", num) if num else const(1.0)
    if den:
        out = apply("div", out, _chain(apply, "mul", den))
    return apply("neg", out) if negate else out

