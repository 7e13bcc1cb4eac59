"""The reverse pass: ``P_i = Σ_{(i,j)∈E} P_j · J_{i→j}``, seeded with ``P_out = v``.

The adjoints are built from the same operators as the forward graph, in the same
graph, so they are compiled by the same pipeline and can be differentiated again.
:func:`vjp` is written against the small interface of ``ops.py`` (operators,
``.sum``/``.reshape``/``.broadcast_to``/``.transpose``, an ``apply``/``const``
owner), so the runtime replays it on tensors for ``create_graph=True``.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import ops
from .graph import Expr, Graph, GraphError, ancestors
from .ops import ELEMENTWISE, STRUCTURED


# ---- instantiating a partial (a tiny program built when the operator was declared) -----------
def instantiate(op: str, slot: int, args, out, owner):
    """``J`` for operand ``slot`` of ``op``, built from ``owner``'s operators."""
    template = ELEMENTWISE[op].templates[slot]
    if isinstance(template, float):
        return template
    program, result = template
    leaves = (*args, *[None] * (3 - len(args)), out)      # a, b, c, out
    values = []

    def get(ref):
        kind, k = ref
        return leaves[k] if kind == "leaf" else values[k]
    for step in program:
        if step[0] == "const":
            values.append(step[1])            # plain numbers: owners' operators take them
        else:
            _, name, operands, params = step
            values.append(owner.apply(name, *[get(r) if isinstance(r, tuple) else r
                                               for r in operands], params=params))
    return get(result)


def vjp(op: str, params, adjoint, args, out, owner, wanted=None, lazy=False):
    """Contributions ``P_out · J_{k→out}`` for every operand k (None where constant, or
    for an elementwise operator's operands that ``wanted`` (a set of ids) leaves out).
    ``lazy``: a contribution −P (x − y's y, −x's x) is ``Negated(P)``, no node yet."""
    if op in STRUCTURED:
        return STRUCTURED[op].vjp(adjoint, args, out, params)
    contributions = []
    templates = ELEMENTWISE[op].templates
    for slot, arg in enumerate(args):
        # flat (no gradient flows through this operand), or not asked for (a constant)
        if templates[slot] == 0.0 or (wanted is not None and arg.id not in wanted):
            contributions.append(None)
            continue
        j = instantiate(op, slot, args, out, owner)
        if lazy and type(j) is float and j == -1.0 and arg.shape == adjoint.shape:
            contributions.append(Negated(adjoint))
            continue
        term = adjoint if type(j) is float and j == 1.0 else adjoint * j   # (as P·1 folds)
        contributions.append(ops.unbroadcast(term, arg.shape))
    return contributions


class Negated:
    """A contribution −P not yet made a node: most are added to others, as ``a − P``
    (see ``_plus``), and the ``neg`` node was left unused (5,307 of Lennard-Jones N=60's
    7,080).  Made a node only where it is an adjoint on its own."""
    __slots__ = ("value",)
    op = "negated"

    def __init__(self, value: Expr):
        self.value = value

    def made(self) -> Expr:
        return -self.value


def jvp(op: str, params, tangents, args, out, owner):
    """``Σ_k J_{k→out} · u_k``: the tangent of ``out`` from its operands' (None where
    constant), from the same table entries as :func:`vjp`."""
    if op in STRUCTURED:
        rule = STRUCTURED[op].jvp
        if rule is not None:
            return rule(tangents, args, out, params)
        # linear in its float operands: the operator applied to their tangents (index
        # operands stay as they are)
        operands = [t if t is not None else _zeros(owner, a) if a.dtype.kind == "f" else a
                    for t, a in zip(tangents, args)]
        return owner.apply(op, *operands, params=params)
    total = None
    for slot, (arg, t) in enumerate(zip(args, tangents)):
        if t is None or ELEMENTWISE[op].templates[slot] == 0.0:
            continue
        j = instantiate(op, slot, args, out, owner)
        term = t if isinstance(j, float) and j == 1.0 else t * j
        total = term if total is None else total + term
    if total is not None and total.shape != out.shape:
        total = total.broadcast_to(out.shape)
    return total


def _zeros(owner, like):
    return owner.broadcast_to(owner.const(0.0, like.dtype), like.shape)


# ---- the forward-mode pass on a Graph -------------------------------------------------------
class Scaled:
    """A tangent not yet a node: ``coefficient · source``.  ``source`` is a tangent that
    is a node; ``coefficient`` (a number, or a node of primal values) is the derivative
    of this node with respect to the source's along elementwise operators.

    Forward mode carries tangents in this form through elementwise operators and
    multiplies their partials into the coefficient instead of into the tangent
    (preaccumulation of the local Jacobian, as Griewank and Walther describe).  Partials
    that are numbers fold away: for ``h' = sin(h)·1.0001 + 0.1·h·h`` the step's tangent
    is ``(cos h·1.0001 + (0.1·h + 0.1·h))·ḣ``, where ``0.1·h`` is the primal's own node.
    That is four operations where the tangents term by term take seven (``ḣ·cos h``,
    ``·1.0001``, ``0.1·ḣ``, ``·h``, ``0.1h·ḣ`` and two sums).

    A tangent becomes a node (``made``) where a structured operator reads it, where it
    is an output, where it meets a tangent of another source, where more than one
    operator reads it (each would multiply by its coefficient again), and where its
    coefficient is a node and would be multiplied by a partial that is one."""
    __slots__ = ("source", "coefficient")

    def __init__(self, source: Expr, coefficient=1.0):
        self.source, self.coefficient = source, coefficient

    def made(self) -> Expr:
        c = self.coefficient
        return self.source if type(c) is float and c == 1.0 else self.source * c

    def fixed(self) -> bool:
        """Whether the coefficient is a number."""
        return type(self.coefficient) is float


def _scaled_jvp(op: str, moving, args, out, owner):
    """The tangent of elementwise ``out`` from its operands' (``Scaled``, or None where
    constant) as a ``Scaled`` of their one source; None when they have several, or an
    operand's shape or dtype is not ``out``'s."""
    templates = ELEMENTWISE[op].templates
    source, coefficient = None, None
    for slot, (arg, t) in enumerate(zip(args, moving)):
        if t is None or templates[slot] == 0.0:
            continue
        partial = _number(instantiate(op, slot, args, out, owner))
        if type(partial) is not float and not t.fixed():
            t = Scaled(t.made())          # (a node times a node: the tangent is as cheap)
        if arg.shape != out.shape or arg.dtype != out.dtype or \
                (source is not None and t.source.id != source.id):
            return None
        term = _times(t.coefficient, partial)
        source = t.source
        coefficient = term if coefficient is None else coefficient + term
    return None if source is None else Scaled(source, coefficient)


def _number(partial):
    """A partial as a float when it is a number or a scalar constant node."""
    if isinstance(partial, (int, float)):
        return float(partial)
    return float(partial.params[0]) if partial.op == "const" else partial


def _times(a, b):
    """A coefficient times a partial, numbers folded (1·x is x)."""
    if type(a) is float and a == 1.0:
        return b
    if type(b) is float and b == 1.0:
        return a
    return a * b        # (a number first: ``0.1·h`` as written is found again, one node)


def tangents(g: Graph, outputs, wrt, inputs) -> list[Expr]:
    """``J·u``: the tangents of ``outputs`` when each ``wrt`` node moves along its
    tangent ``inputs`` (one per wrt node, of its shape) — one forward sweep."""
    outputs, wrt, inputs = _as_list(outputs), _as_list(wrt), _as_list(inputs)
    if len(inputs) != len(wrt):
        raise GraphError(f"{len(wrt)} wrt nodes but {len(inputs)} tangents: give one each")
    live = relevant_nodes(g, outputs, wrt)
    tangent: dict[int, Scaled] = {}
    for w, u in zip(wrt, inputs):
        if u.shape != w.shape:
            raise GraphError(f"the tangent for {w.name} has shape {u.shape}; {w.name} has "
                             f"shape {w.shape}")
        tangent[w.id] = Scaled(tangent[w.id].made() + u) if w.id in tangent else Scaled(u)
    readers = dict.fromkeys(live, 0)        # live operators reading each live node
    for i in live:
        for a in set(g.attrs[i]["args"]):
            if a in readers:
                readers[a] += 1
    for i in sorted(live):              # ids are a topological order
        node = Expr(g, i)
        if i in tangent or node.op in ("input", "const", "array"):
            continue
        args = node.args
        moving = [tangent.get(a.id) for a in args]
        if all(t is None for t in moving):
            continue
        t = _scaled_jvp(node.op, moving, args, node, g) if node.op in ELEMENTWISE else None
        if t is None:
            t = jvp(node.op, node.params, [m and m.made() for m in moving], args, node, g)
            t = None if t is None else Scaled(t)
        elif readers[i] > 1 and not t.fixed():
            t = Scaled(t.made())
        if t is not None:
            tangent[i] = t
    return [tangent[o.id].made() if o.id in tangent else _zeros(g, o) for o in outputs]


# ---- the reverse pass on a Graph ------------------------------------------------------------
def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def relevant_nodes(g: Graph, outputs, wrt) -> set:
    """Nodes on some path from a ``wrt`` node to an output: the outputs' ancestors, then
    those among them that a ``wrt`` node reaches, in id order (a topological order) —
    linear, however many there are."""
    up = ancestors(g, [o.id for o in outputs])
    down = {w.id for w in wrt}
    nodes = g.attrs
    for i in sorted(up):
        if i not in down:
            for a in nodes[i]["args"]:
                if a in down:
                    down.add(i)
                    break
    return up & down


def grad(g: Graph, outputs, wrt, seeds=None) -> list[Expr]:
    """Adjoints of ``wrt`` for ``outputs`` seeded with ``seeds`` (one per output)."""
    outputs, wrt = _as_list(outputs), _as_list(wrt)
    for e in outputs + wrt:
        if not isinstance(e, Expr) or e.graph is not g:
            raise GraphError(f"{e!r} is not a node of this graph")
    seeds = _seeds(g, outputs, seeds)
    live = relevant_nodes(g, outputs, wrt)
    # each node's contributions P_j·J_{i→j}, added up when the node is reached: every one
    # has arrived by then (ids are a topological order)
    contributions: dict[int, list] = {}
    for o, s in zip(outputs, seeds):
        if o.id in live:
            contributions.setdefault(o.id, []).append(s)
    adjoint: dict[int, Expr] = {}
    nodes = g.attrs
    for i in sorted(live, reverse=True):
        if i not in contributions:
            continue
        adjoint[i] = total = _total(g, contributions.pop(i))
        at = nodes[i]
        if at["op"] in ("input", "const", "array"):
            continue
        args = tuple(Expr(g, a) for a in at["args"])
        for arg, contribution in zip(args, vjp(at["op"], at["params"], total, args, Expr(g, i),
                                               g, live, lazy=True)):
            if contribution is not None and arg.id in live:
                contributions.setdefault(arg.id, []).append(contribution)
    return [adjoint[w.id] if w.id in adjoint else _zeros(g, w) for w in wrt]


def _total(g: Graph, terms: list) -> Expr:
    """The sum of an adjoint's contributions, in the order they came.  A run of embeds of
    one tensor at distinct leading positions — the adjoints of x[0], x[1], … read one by
    one — is one embed of all the pieces: adding k one-hot tensors costs k·size and makes
    a k-deep sum, the joined embed one pass.  Only consecutive ones, so every element
    still adds up in the order it did (and as the eager runtime does), bit for bit."""
    if len(terms) >= 3:
        terms = _joined_embeds(g, terms)
    total = terms[0]
    for term in terms[1:]:
        total = _plus(total, term)
    return total.made() if type(total) is Negated else total


def _plus(a, b) -> Expr:
    """a + b, written a − x where b (or a) is −x (a ``neg`` node or ``Negated``): IEEE
    defines a − x as a + (−x), so the bits are the same, and no negation is needed (the
    adjoint of x − y's y is −P: a third of Lennard-Jones's gradient terms).  Two
    negations are (−x) − y, as written: −(x + y) would differ in the sign of a zero."""
    if type(b) is Negated or b.op == "neg":        # (a neg node: one shape, as its operand)
        return (a.made() if type(a) is Negated else a) - \
            (b.value if type(b) is Negated else b.args[0])
    if type(a) is Negated or a.op == "neg":
        return b - (a.value if type(a) is Negated else a.args[0])
    return a + b


def _leading_position(spec, shape):
    """The ints of a spec that picks one position on leading axes and keeps the rest
    whole (x[3], x[2, 1]), or None."""
    ints = []
    for it in spec:
        if it[0] != "int":
            break
        ints.append(it[1])
    rest = spec[len(ints):]
    if not ints or any(it != ops.full_slice(n) for it, n in zip(rest, shape[len(ints):])) or \
            len(spec) > len(shape):
        return None
    return tuple(ints)


def _joinable(t):
    """(group key, the embed's positions) of a term that can join a run, or None."""
    if t.op != "embed":
        return None
    shape, specs = t.params[0], t.params[1:]
    positions = [_leading_position(spec, shape) for spec in specs]
    if any(p is None for p in positions) or len({len(p) for p in positions}) != 1 or \
            len(set(positions)) != len(positions):
        return None
    return (shape, t.dtype, len(positions[0])), positions


def _joined_embeds(g: Graph, terms: list) -> list:
    out, run, key, seen = [], [], None, set()

    def close():
        if len(run) > 1:   # (+ 0: a −0 piece is +0, as in the sum of one-hot tensors)
            shape, dtype, _ = key
            pieces = [p + 0.0 for t in run for p in t.args]
            specs = tuple(spec for t in run for spec in t.params[1:])
            out.append(g._structured("embed", pieces, (shape, *specs), dtype))
        else:
            out.extend(run)
    for t in terms:
        joinable = _joinable(t)
        if joinable is not None and joinable[0] == key and not seen.intersection(joinable[1]):
            run.append(t)
            seen.update(joinable[1])
            continue
        close()
        if joinable is None:
            out.append(t)
            run, key, seen = [], None, set()
        else:
            run, key, seen = [t], joinable[0], set(joinable[1])
    close()
    return out


def _seeds(g, outputs, seeds):
    if seeds is None:
        seeds = [None] * len(outputs)
    seeds = _as_list(seeds)
    if len(seeds) != len(outputs):
        raise GraphError(f"{len(outputs)} outputs but {len(seeds)} seeds: give one per output")
    out = []
    for o, s in zip(outputs, seeds):
        if s is None:
            if o.shape != ():
                raise GraphError(f"output {o.name} has shape {o.shape}: a seed of that shape is "
                                 "needed (the v of vᵀJ); only scalar outputs default to 1")
            s = g.const(1.0, o.dtype)
        elif not isinstance(s, Expr):
            s = g.const(s, o.dtype)
        if s.shape != o.shape:
            s = g.broadcast_to(s, o.shape) if s.shape == () else s
            if s.shape != o.shape:
                raise GraphError(f"seed for {o.name} has shape {s.shape}, the output has shape "
                                 f"{o.shape}: they must match")
        out.append(s)
    return out


# ---- what the user reads: J on edges, P equations ------------------------------------------------
@dataclass(frozen=True)
class LinearMap:
    """The local Jacobian of a structured operator: the linear map ``P ↦ P·J`` that its
    VJP rule applies, written with the actual operands (``P ↦ P @ xᵀ``)."""
    op: str
    slots: tuple         # the operand slots the source fills (two in x @ x)
    operands: tuple      # the operands' names
    params: tuple
    shapes: tuple        # the operands' shapes

    def apply(self, adjoint: str, names=None, tex: bool = False) -> str:
        """``adjoint·J`` as text (or LaTeX), operands written as ``names``."""
        return " + ".join(STRUCTURED[self.op].rule(slot, adjoint, list(names or self.operands),
                                                   self.params, self.shapes, tex)
                          for slot in self.slots)

    def __str__(self):
        return f"P ↦ {self.apply('P')}"


def show(expr) -> str:
    """A SymPy expression as the reports write it: ``2·h``, ``1 - h^2``."""
    return str(expr).replace("**", "^").replace("*", "·")


def display_number(value: float):
    """A constant as a person writes it: 2, not 2.00000000000000; 0.1, not 0.100000000000000."""
    if not math.isfinite(value):
        return sp.nan if math.isnan(value) else (sp.oo if value > 0 else -sp.oo)
    if value.is_integer() and abs(value) < 1e15:
        return sp.Integer(int(value))
    text = repr(value)            # the shortest decimal that reads back as this double
    mantissa = text.split("e")[0].replace("-", "").replace(".", "").lstrip("0")
    return sp.Float(text, dps=len(mantissa) or 1)


def local_jacobian(g: Graph, source: Expr, target: Expr, symbol=None):
    """``J_{source→target}``: a sympy expression (the diagonal entry for tensors), or a
    :class:`LinearMap` for structured operators.  ``symbol(node)`` names the nodes in it
    (default: each node's own symbol).

    >>> g = Graph(); u1, u2 = g.input("u1"), g.input("u2")
    >>> u4 = u2 * (u1 + u2)
    >>> g.local_jacobian(u2, u4)
    u3
    """
    slots = [s for s, a in enumerate(target.args) if a.id == source.id]
    if not slots:
        raise GraphError(f"{source.name} is not an operand of {target.name}: no edge "
                         f"({source.name}, {target.name})")
    symbol = symbol or (lambda e: g.symbol(e.id))
    if target.op in STRUCTURED:
        return LinearMap(target.op, tuple(slots), tuple(str(_display_symbol(a, symbol))
                                                      for a in target.args),
                         target.params, tuple(a.shape for a in target.args))
    env = {ops.OUT: _display_symbol(target, symbol)}
    for sym, arg in zip(ops.OPERANDS, target.args):
        env[sym] = _display_symbol(arg, symbol)
    total = sum((ELEMENTWISE[target.op].local_jacobian(s) for s in slots), sp.S.Zero)
    return ops.readable(total.xreplace(env))      # one simultaneous pass: fast


def _display_symbol(e: Expr, symbol):
    return display_number(e.params[0]) if e.op == "const" else symbol(e)


class Notation:
    """How nodes are written: ``u7`` (or the user's name), ``J_{7→h}``, ``P7`` / ``P_h``;
    the same in LaTeX (``u_{7}``, ``J_{7 \\to h}``, ``P_{7}``)."""

    def __init__(self, names=None):
        self.names = dict(names or {})     # node id -> the name the user gave it

    def label(self, e: Expr) -> str:
        return self.names.get(e.id, e.name)

    def sub(self, e: Expr, tex: bool = False) -> str:
        """The subscript: the number for the node's own automatic name (document 002's
        J_{2→4}, P4), else its name."""
        label = self.label(e)
        if label == f"u{e.id}":
            return str(e.id)
        return _tex_name(label) if tex else label

    def node(self, e: Expr, tex: bool = False) -> str:
        if e.op == "const":
            number = display_number(e.params[0])
            return sp.latex(number) if tex else str(number)
        return _tex_name(self.label(e)) if tex else self.label(e)

    def symbol(self, e: Expr) -> sp.Symbol:
        return sp.Symbol(self.label(e), real=True)

    def J(self, source: Expr, target: Expr, tex: bool = False) -> str:
        if tex:
            return rf"J_{{{self.sub(source, True)} \to {self.sub(target, True)}}}"
        return f"J_{{{self.sub(source)}→{self.sub(target)}}}"

    def P(self, e: Expr, tex: bool = False) -> str:
        sub = self.sub(e, tex)
        if tex:
            return f"P_{{{sub}}}"
        return f"P{sub}" if sub.isdigit() else f"P_{sub}"


def _tex_name(name: str) -> str:
    return sp.latex(sp.Symbol(name.replace("′", "'")))


PLAIN = Notation()         # nodes under their own names


@dataclass
class Adjoint:
    """One row of the reverse sweep: ``P_i = Σ_j P_j·J_{i→j}``."""
    node: Expr
    terms: list = field(default_factory=list)     # [(consumer Expr, J)]
    value: object = None                         # numbers when ``at`` was given

    @property
    def name(self):
        return PLAIN.P(self.node)

    def symbolic(self) -> str:
        if not self.terms:
            return "seed"
        return " + ".join(f"{PLAIN.P(c)}·{PLAIN.J(self.node, c)}" for c, _ in self.terms)

    def expanded(self) -> str:
        if not self.terms:
            return "seed"
        return " + ".join(f"{PLAIN.P(c)}·({show(j)})" if not isinstance(j, LinearMap) else
                          j.apply(PLAIN.P(c)) for c, j in self.terms)

    def __str__(self):
        text = f"{self.name} = {self.symbolic()}"
        if self.terms:
            text += f" = {self.expanded()}"
        if self.value is not None:
            text += f" = {format_value(self.value)}"
        return text


def format_value(v, whole: bool = False) -> str:
    """A value on one line (numpy's own elision past 1,000 entries unless ``whole``)."""
    v = np.asarray(v)
    if v.ndim == 0:
        return f"{v.item():g}"
    threshold = sys.maxsize if whole else None
    return " ".join(np.array2string(v, precision=4, separator=", ",
                                    threshold=threshold).split())


def adjoint_table(g: Graph, of, wrt=None, at=None, seed=None) -> list[Adjoint]:
    """Adjoint equations for every node feeding ``of``, in reverse topological order.

    >>> g = Graph(); u1, u2 = g.input("u1"), g.input("u2")
    >>> u4 = u2 * (u1 + u2)
    >>> for row in g.adjoints(of=u4, at={"u1": 2, "u2": 3}): print(row)
    P4 = seed = 1
    P3 = P4·J_{3→4} = P4·(u2) = 3
    P2 = P4·J_{2→4} + P3·J_{2→3} = P4·(u3) + P3·(1) = 8
    P1 = P3·J_{1→3} = P3·(1) = 3
    """
    outputs = _as_list(of)
    if wrt is None:
        wrt = [e for e in g.inputs]
    live = relevant_nodes(g, outputs, _as_list(wrt))
    live |= {o.id for o in outputs}
    live = {i for i in live if Expr(g, i).op != "const"}
    rows = []
    for i in sorted(live, reverse=True):
        node = Expr(g, i)
        row = Adjoint(node)
        for _, j in sorted(g.nx.out_edges(i), reverse=True):
            if j in live and j not in {c.id for c, _ in row.terms}:
                row.terms.append((Expr(g, j), local_jacobian(g, node, Expr(g, j))))
        rows.append(row)
    if at is not None:
        work = g.copy()
        nodes = [Expr(work, r.node.id) for r in rows]
        outs = [Expr(work, o.id) for o in outputs]
        grads = work.grad(outs, nodes, seed)
        values = work.evaluate(grads, at)
        for row, v in zip(rows, values):
            row.value = v
    return rows
