"""A fused kernel as scalar sympy: assignments ``t = expr``.

Every member of a kernel becomes a scalar sympy expression over the values the
kernel loads.  A member read once inside its kernel is inlined into its reader
while the result stays small; the rest become assignments.

By default the expressions are built unevaluated: they are the graph's own
operations, and lowering emits exactly those, so the result is what IEEE
arithmetic gives (SymPy's automatic evaluation applies real-number identities —
``(x + c) − c → x``, ``log(exp(z)) → z`` — that floating point does not obey).
With ``fast_math`` (``evaluate=True`` here) sympy canonicalises and folds, and
``sympy.cse`` shares the repeated subexpressions its rewriting exposes.

Budgets keep this linear: an inlined expression holds at most ``INLINE_SIZE``
operations (so no expression is deep, and lowering never recurses far).  Sympy's
automatic evaluation costs up to milliseconds per node (assumption queries), so
it runs only on programs of at most ``SYMPY_BUDGET`` members, and CSE only under
``CSE_BUDGET`` operations; larger kernels keep their expressions as built
(unevaluated, linear time) — the graph's hash-consing and folding already
shared and simplified them, and LLVM's GVN shares the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import sympy as sp

from . import ops
from .graph import Graph
from .ops import ELEMENTWISE

INLINE_SIZE = 24
SYMPY_BUDGET = 1500
CSE_BUDGET = 4000


@dataclass
class ScalarKernel:
    """``assignments`` in order; ``results`` maps a stored or reduced node to its value."""
    assignments: list          # [(Symbol, Expr)]
    results: dict              # node id -> Expr (over symbols)
    loads: dict                # Symbol -> node id read from a buffer

    def __str__(self):
        lines = [f"{s} = {e}" for s, e in self.assignments]
        lines += [f"u{i} := {e}" for i, e in self.results.items()]
        return "\n".join(lines)


def sympy_number(value: float):
    """A graph constant as the SymPy number kernels are built with (lowering reads it
    back exactly: integers as Integer, others as Float)."""
    if value == 0 and math.copysign(1.0, value) < 0:
        # SymPy has no −0.0; −(0.0) left unevaluated lowers to it
        return sp.Mul(sp.S.NegativeOne, sp.Float(0.0), evaluate=False)
    return sp.Integer(int(value)) if float(value).is_integer() else sp.Float(value)


def to_sympy(g: Graph, kernel, evaluate: bool = False) -> ScalarKernel:
    """``evaluate``: let sympy canonicalise (fast_math; the pipeline passes False by
    default and for programs too large in total)."""
    attrs = g.attrs
    members = set(kernel.members)
    uses = {m: 0 for m in members}
    for m in kernel.members:
        for a in attrs[m]["args"]:
            if a in uses:
                uses[a] += 1
    for r in kernel.reductions.values():
        if r.operand in uses:
            uses[r.operand] += 1
    for m, _, _ in kernel.scatters:
        uses[m] += 1

    loads = {}
    value, size = {}, {}
    for i in kernel.loads:
        s = sp.Symbol(f"x{i}", real=True)
        loads[s], value[i], size[i] = i, s, 0
    for i, v in kernel.consts.items():
        value[i], size[i] = sympy_number(v), 0

    evaluate = evaluate and len(kernel.members) <= SYMPY_BUDGET
    with sp.evaluate(evaluate):  # entered once: entering clears sympy's cache
        assignments = _assign(kernel, attrs, uses, value, size)
    results = {m: value[m] for m in [*kernel.stores, *(m for m, _, _ in kernel.scatters)]}
    results.update({i: value[r.operand] for i, r in kernel.reductions.items()})
    if evaluate and sum(1 + size.get(m, 0) for m in kernel.members) <= CSE_BUDGET \
            and assignments:
        assignments, results = _cse(assignments, results)
    return ScalarKernel(assignments, results, loads)


def _assign(kernel, attrs, uses, value, size):
    """Each member as an expression; kept as an assignment unless inlined."""
    assignments = []
    for m in kernel.members:
        a = attrs[m]
        args = a["args"]
        env = dict(zip(ops.OPERANDS, (value[x] for x in args)))
        expr = ELEMENTWISE[a["op"]].formula.xreplace(env)
        n = 1 + sum(size[x] for x in args)
        # a power with a negative exponent stays a value of its own: inlined into a
        # product, y·x⁻¹ would lower as y/x, one rounding where the graph has two
        keep = m in kernel.stores or uses[m] != 1 or n > INLINE_SIZE or \
            (isinstance(expr, sp.Pow) and expr.exp.is_negative)
        if keep and not (expr.is_Atom):
            s = sp.Symbol(f"t{m}", real=True)
            assignments.append((s, expr))
            value[m], size[m] = s, 0
        else:
            value[m], size[m] = expr, (0 if expr.is_Atom else n)
    return assignments


def _cse(assignments, results):
    """Share repeated subexpressions across the kernel's assignments and results."""
    names = [s for s, _ in assignments]
    exprs = [e for _, e in assignments] + list(results.values())
    symbols = sp.numbered_symbols("c", real=True)
    shared, reduced = sp.cse(exprs, symbols=symbols, order="none")
    # cse's own definitions go first: they only read loads and earlier definitions
    # because assignment symbols are opaque to it, any definition mentioning one must
    # come after that assignment.  Place each by its latest dependency.
    position = {s: k for k, s in enumerate(names)}
    placed = [[] for _ in range(len(names) + 1)]
    depth = {}
    for c, e in shared:
        deps = [position[s] + 1 for s in e.free_symbols if s in position]
        deps += [depth[s] for s in e.free_symbols if s in depth]
        depth[c] = max(deps, default=0)
        placed[depth[c]].append((c, e))
    out = list(placed[0])
    for k, s in enumerate(names):
        out.append((s, reduced[k]))
        out.extend(placed[k + 1])
    new_results = dict(zip(results.keys(), reduced[len(names):]))
    return out, new_results
