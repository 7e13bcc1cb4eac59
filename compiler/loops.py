"""Loops compiled once: ``scan`` (as ``jax.lax.scan``) and ``fori_loop``.

A loop is one node of the graph, operator ``loop``, whose parameter is its :class:`Body`:
a graph of its own over the carry entering a step, the step's slices of ``xs`` and the
outer values the body reads (its ``consts``: captured expressions, array constants), with
the carry leaving the step and the step's ``y`` as outputs.  The node's value has one row
per step — the carry leaving it and its ``y``, flattened: shape ``(length, width)`` — so
the final carry and the stacked ``ys`` are views of it, and the rows are the stored
trajectory that reverse mode reads.

The derivatives are loops of the same operator (the table entry's rules below):

* VJP — a loop the other way round over the body's VJP.  Its carry is the adjoint of the
  carry (and the running sums of the consts' adjoints); its slices are the carry that
  entered each step (read off the forward rows), the xs, and the output's adjoint; its
  ys are the adjoints of the xs.  ``P_c(t) = P_row(t) + P_c(t+1)·J_{c(t)→c(t+1)}``.
* JVP — a loop the same way round over the body's JVP, reading the stored carries; its
  rows are the tangent of the forward rows.

So a loop's VJP is again a loop of table entries, and differentiates again.
``checkpoint=k`` nests two loops: the outer one stores every k-th carry, and the reverse
pass recomputes each block of k steps from it.
"""
from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .autodiff import _zeros
from .errors import GraphError, ShapeError
from .graph import BOOL, INDEX, Expr, Graph, ancestors

_active = threading.local()         # the bodies being traced, innermost last


# ---- the body: a graph of its own ----------------------------------------------------------
class BodyGraph(Graph):
    """The graph a loop body is traced into.  An expression of an enclosing graph used
    here (a weight ``W`` in ``c @ W``) becomes an input of the body — *captured* — and an
    operand of the loop node."""

    def __init__(self, dtype, parent: Graph | None):
        super().__init__(dtype)
        self.parent = parent
        self._depth = parent._depth + 1 if parent is not None else 1
        self.captured: dict[int, int] = {}     # parent node id -> body input id
        self.outer: list = []                  # the captured parent Exprs, in order

    def _operand(self, x, dtype):
        if isinstance(x, Expr) and x.graph is not self:
            x = self.capture(x)
        return super()._operand(x, dtype)

    def capture(self, x: Expr) -> Expr:
        if self.parent is None:                # adopt the graph of the first outer value
            self.parent, self._depth = x.graph, x.graph._depth + 1
        if x.graph is not self.parent:
            enclosing, g = False, self.parent
            while isinstance(g, BodyGraph) and g.parent is not None:
                g = g.parent
                enclosing = enclosing or g is x.graph
            if not enclosing:
                raise GraphError(f"{x.name} belongs to a graph this loop body is not "
                                 "inside; a body reads its own inputs and the expressions "
                                 "of the graphs around it")
            x = self.parent.capture(x)
        if x.dtype == BOOL:                    # a mask: read as 0/1 there, as everywhere
            x = x.graph._operand(x, x.graph.dtype)
        if x.id not in self.captured:
            name = x._attrs.get("name") or f"outer_{x.name}"
            inner = self.input(self.fresh_name(name), x.shape, x.dtype)
            self.captured[x.id] = inner.id
            self.outer.append(x)
        return Expr(self, self.captured[x.id])

    def _like(self) -> "BodyGraph":
        return BodyGraph(self.dtype, self.parent)


@dataclass(eq=False)
class Body:
    """What a loop node iterates: in ``graph``, the input ids of the carry entering a step,
    of the step's slices and of the values every step reads, and the node ids of the carry
    leaving the step and of the step's ys.  ``hoisted``: array constants of the body made
    inputs (their values are the loop's last operands)."""
    graph: Graph
    carry: tuple
    xs: tuple
    consts: tuple
    carry_out: tuple
    ys: tuple
    length: int
    reverse: bool = False
    hoisted: tuple = ()
    slices: list = field(init=False)
    width: int = field(init=False)
    digest: str = field(init=False)
    derived: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        nodes = self.graph.attrs
        self.slices, offset = [], 0
        for i in self.outputs:
            size = math.prod(nodes[i]["shape"])
            self.slices.append((offset, size))
            offset += size
        self.width = offset
        self.digest = _digest(self)

    outputs = property(lambda self: (*self.carry_out, *self.ys))

    def __hash__(self):
        return hash(self.digest)

    def __eq__(self, other):
        return isinstance(other, Body) and other.digest == self.digest

    def __repr__(self):     # what the compile cache's key reads: the body's structure
        return f"Body({self.digest})"

    def shape_of(self, i: int) -> tuple:
        return self.graph.attrs[i]["shape"]

    def operand_shapes(self) -> list:
        return [*(self.shape_of(i) for i in self.carry),
                *((self.length, *self.shape_of(i)) for i in self.xs),
                *(self.shape_of(i) for i in self.consts)]

    def operands(self, g: Graph, given: list) -> list:
        """``given`` (inits, xs, consts) and the hoisted array constants, in ``g``."""
        return [*given, *(g.array(c.value) for c in self.hoisted)]

    # -- reading the loop's value -------------------------------------------------------------
    def finals(self, value: Expr) -> list:
        """The carry after the last step (the first row when running backwards)."""
        row = 0 if self.reverse else self.length - 1
        return [value[row, lo:lo + n].reshape(self.shape_of(i))
                for (lo, n), i in zip(self.slices, self.carry_out)]

    def stacked(self, value: Expr) -> list:
        """Each y, stacked: shape ``(length, *y.shape)``."""
        parts = zip(self.slices[len(self.carry_out):], self.ys)
        return [value[:, lo:lo + n].reshape((self.length, *self.shape_of(i)))
                for (lo, n), i in parts]

    def entering(self, value: Expr, inits: list) -> list:
        """The carry entering each step, stacked: the inits, then the rows but the last."""
        out = []
        for (lo, n), init in zip(self.slices, inits):
            first = init.reshape((1, *init.shape))
            if self.length == 1:
                out.append(first)
                continue
            rows = value[1:, lo:lo + n] if self.reverse else value[:-1, lo:lo + n]
            rows = rows.reshape((self.length - 1, *init.shape))
            out.append(value.graph.concatenate([rows, first] if self.reverse else
                                               [first, rows]))
        return out


def _digest(body: Body) -> str:
    g = body.graph
    ins = [*body.carry, *body.xs, *body.consts]
    nodes = g.attrs
    h = hashlib.sha256()
    for i in sorted(ancestors(g, list(body.outputs)) | set(ins)):
        a = nodes[i]
        h.update(repr((i, a["op"], a["args"], a["params"], a["shape"], a["dtype"].char,
                       a.get("bound"))).encode())
    h.update(repr((body.carry, body.xs, body.consts, body.outputs, len(body.carry_out),
                   body.length, body.reverse)).encode())
    return h.hexdigest()


def make_body(g: Graph, carry, xs, consts, carry_out, ys, length, reverse) -> Body:
    """A Body over Exprs of ``g``: outputs that are views or leaves get a copy (each output
    is written by the body), array constants become inputs (``hoisted``)."""
    outs = []
    for e in [*carry_out, *ys]:
        if ops.kind_of(e.op) in ("view", "leaf"):
            e = g.apply("copy", e)
        outs.append(e.id)
    nodes, hoisted = g.attrs, []
    for i in sorted(ancestors(g, outs)):
        if nodes[i]["op"] == "array":     # its value is passed in: code never holds data
            value = nodes[i]["params"][0]
            name = g.fresh_name("array")
            nodes[i].update(op="input", params=(), name=name)
            g._inputs[name] = i
            hoisted.append((i, value))
    n = len(carry_out)
    return Body(g, tuple(c.id for c in carry), tuple(x.id for x in xs),
                tuple([*(k.id for k in consts), *(i for i, _ in hoisted)]),
                tuple(outs[:n]), tuple(outs[n:]), length, reverse,
                tuple(v for _, v in hoisted))


# ---- the derived bodies: the loop's VJP and JVP -------------------------------------------
def reverse_body(body: Body) -> Body:
    """The body of the loop's VJP (run the other way round).  Carry: the adjoint of the
    carry, and the sums so far of the float consts' adjoints.  Slices: the carry that
    entered the step, the step's xs, the adjoint of the step's row.  Ys: the float xs'
    adjoints."""
    if "vjp" in body.derived:
        return body.derived["vjp"]
    g = body.graph.copy()
    carry = [Expr(g, i) for i in body.carry]
    xs = [Expr(g, i) for i in body.xs]
    consts = [Expr(g, i) for i in body.consts]
    moving_x = [x for x in xs if x.dtype.kind == "f"]
    moving_k = [k for k in consts if k.dtype.kind == "f"]
    adjoint = [g.input(g.fresh_name(f"P_{c.name}"), c.shape) for c in carry]
    sums = [g.input(g.fresh_name(f"sum_P_{k.name}"), k.shape) for k in moving_k]
    rows = [g.input(g.fresh_name(f"P_row{p}"), body.shape_of(i))
            for p, i in enumerate(body.outputs)]
    n = len(carry)
    seeds = [a + r for a, r in zip(adjoint, rows[:n])] + rows[n:]
    grads = g.grad([Expr(g, i) for i in body.outputs], carry + moving_x + moving_k, seeds)
    d_carry, d_x = grads[:n], grads[n:n + len(moving_x)]
    d_k = grads[n + len(moving_x):]
    rev = make_body(g, adjoint + sums, carry + xs + rows, consts,
                    d_carry + [s + d for s, d in zip(sums, d_k)], d_x, body.length,
                    not body.reverse)
    body.derived["vjp"] = rev
    return rev


def _loop_vjp(adjoint, args, out, params):
    (body,) = params
    g = out.graph
    nc, nx_ = len(body.carry), len(body.xs)
    inits, xs, consts = list(args[:nc]), list(args[nc:nc + nx_]), list(args[nc + nx_:])
    rev = reverse_body(body)
    moving_k = [k for k in consts if k.dtype.kind == "f"]
    rows = [adjoint[:, lo:lo + n].reshape((body.length, *body.shape_of(i)))
            for (lo, n), i in zip(body.slices, body.outputs)]
    given = [*(_zeros(g, c) for c in inits), *(_zeros(g, k) for k in moving_k),
             *body.entering(out, inits), *xs, *rows, *consts]
    value = g.apply("loop", *rev.operands(g, given), params=(rev,))
    finals, d_xs = rev.finals(value), iter(rev.stacked(value))
    d_consts = iter(finals[nc:])
    return [*finals[:nc],
            *(next(d_xs) if x.dtype.kind == "f" else None for x in xs),
            *(next(d_consts) if k.dtype.kind == "f" else None for k in consts)]


def tangent_body(body: Body, moving: tuple) -> Body:
    """The body of the loop's JVP when the operands marked in ``moving`` move.  Carry: the
    carry's tangent.  Slices: the carry that entered the step, the xs, the moving xs'
    tangents.  Consts: the consts, the moving consts' tangents."""
    if moving in body.derived:
        return body.derived[moving]
    g = body.graph.copy()
    nc, nx_ = len(body.carry), len(body.xs)
    carry = [Expr(g, i) for i in body.carry]
    xs = [Expr(g, i) for i in body.xs]
    consts = [Expr(g, i) for i in body.consts]
    dx = [x for x, m in zip(xs, moving[nc:nc + nx_]) if m]
    dk = [k for k, m in zip(consts, moving[nc + nx_:]) if m]
    wrt = carry + dx + dk
    tangents = [g.input(g.fresh_name(f"tangent_{e.name}"), e.shape) for e in wrt]
    out = g.jvp([Expr(g, i) for i in body.outputs], wrt, tangents)
    n = len(carry)
    t_carry, t_x, t_k = tangents[:n], tangents[n:n + len(dx)], tangents[n + len(dx):]
    tb = make_body(g, t_carry, carry + xs + t_x, consts + t_k, out[:n], out[n:],
                   body.length, body.reverse)
    body.derived[moving] = tb
    return tb


def _loop_jvp(tangents, args, out, params):
    (body,) = params
    g = out.graph
    nc, nx_ = len(body.carry), len(body.xs)
    moving = tuple(t is not None and a.dtype.kind == "f" for t, a in zip(tangents, args))
    tb = tangent_body(body, moving)
    inits, xs, consts = list(args[:nc]), list(args[nc:nc + nx_]), list(args[nc + nx_:])
    t_inits = [t if m else _zeros(g, a)
               for t, a, m in zip(tangents[:nc], inits, moving[:nc])]
    t_xs = [t for t, m in zip(tangents[nc:nc + nx_], moving[nc:nc + nx_]) if m]
    t_consts = [t for t, m in zip(tangents[nc + nx_:], moving[nc + nx_:]) if m]
    # the tangent body's hoisted arrays come after all of these
    given = [*t_inits, *body.entering(out, inits), *xs, *t_xs, *consts, *t_consts]
    return g.apply("loop", *tb.operands(g, given), params=(tb,))


# ---- the table entry ----------------------------------------------------------------------
def _loop_shape(shapes, params):
    (body,) = params
    expected = body.operand_shapes()
    if list(shapes) != expected:
        raise ShapeError(f"loop: operands of shapes {list(shapes)}, the body expects "
                         f"{expected}")
    return (body.length, body.width)


def _loop_numpy(args, params):
    """The reference: the body evaluated step by step (numpy, for checking)."""
    from .evaluate import evaluate
    (body,) = params
    g = body.graph
    nc, nx_ = len(body.carry), len(body.xs)
    carry = list(args[:nc])
    fixed = {Expr(g, i): v for i, v in zip(body.consts, args[nc + nx_:])}
    out = np.empty((body.length, body.width), dtype=g.dtype)
    outputs = [Expr(g, i) for i in body.outputs]
    steps = range(body.length)
    for t in (reversed(steps) if body.reverse else steps):
        given = {**fixed, **{Expr(g, i): c for i, c in zip(body.carry, carry)},
                 **{Expr(g, i): x[t] for i, x in zip(body.xs, args[nc:nc + nx_])}}
        values = evaluate(g, outputs, given)
        for (lo, n), v in zip(body.slices, values):
            out[t, lo:lo + n] = np.ravel(v)
        carry = values[:nc]
    return out


def _loop_show(x, params, shapes, tex):
    (body,) = params
    nc, nx_ = len(body.carry), len(body.xs)
    word = (lambda w: rf"\text{{{w}}}") if tex else (lambda w: w)
    parts = [f"{word('init')}=({', '.join(x[:nc])})"]
    if nx_:
        parts.append(f"{word('xs')}=({', '.join(x[nc:nc + nx_])})")
    if len(x) > nc + nx_:
        parts.append(f"{word('reads')}=({', '.join(x[nc + nx_:])})")
    parts.append(word(f"{body.length} steps" + (", reversed" if body.reverse else "")))
    return ops.written_call("scan", parts, tex)


def _loop_rule(slot, P, x, params, shapes, tex):
    """The adjoint an operand receives: from the loop over the body's VJP."""
    (body,) = params
    nc, nx_ = len(body.carry), len(body.xs)
    what = "final carry" if slot < nc else "ys" if slot < nc + nx_ else "final sum"
    if tex:
        return rf"\operatorname{{scan\_vjp}}\left({P}\right)_{{\text{{{what}}}}}"
    return f"{what} of the reverse scan of the body's VJP over {P}"


ops.structured("loop", "loop", _loop_shape, _loop_numpy, _loop_vjp, _loop_show, _loop_rule,
               jvp=_loop_jvp)


# ---- the user's API: scan, fori_loop --------------------------------------------------------
def scan(f, init, xs=None, length=None, *, reverse=False, checkpoint=None):
    """``jax.lax.scan``: ``f(carry, x) -> (carry, y)`` applied along the leading axis of
    ``xs``; returns the final carry and the ys stacked.  ``f`` is traced once into a body
    graph, and the loop runs natively around it.

    ``init``, ``xs`` and what ``f`` returns may be expressions, numbers, or (nested)
    tuples, lists and dicts of them; ``f`` may read expressions of the graph around it
    (weights): they become operands of the loop.  ``length``: the number of steps when
    there are no ``xs``.  ``reverse=True`` runs from the last slice to the first (ys keep
    their order).  ``checkpoint=k`` stores the carry only every k steps: the reverse pass
    recomputes each block of k steps from it (memory ~ length/k + k carries, one more
    forward pass of time).

    >>> g = Graph()
    >>> h = g.input("h", (3,))
    >>> final, ys = scan(lambda c, x: (sin(c) + x, c.sum()), h, g.array(np.ones((4, 3))))
    """
    carry_leaves, carry_def = _flatten(init, "init")
    x_leaves, x_def = _flatten(xs, "xs")
    length = _length(x_leaves, length)
    if not isinstance(reverse, bool):
        raise TypeError(f"reverse must be True or False, got {reverse!r}")
    if checkpoint is not None:
        if not ops.is_int(checkpoint) or checkpoint < 1:
            raise ValueError(f"checkpoint must be a positive int (steps between stored "
                             f"carries), got {checkpoint!r}")
        if 1 < checkpoint < length:
            return _checkpointed(f, init, xs, length, int(checkpoint), reverse)
    parent = next((e.graph for e in carry_leaves + x_leaves if isinstance(e, Expr)), None)
    if parent is None:
        stack = getattr(_active, "bodies", [])
        parent = stack[-1] if stack else None
    if length == 0:
        return _empty(f, init, carry_leaves, carry_def, x_leaves, parent)
    body, operands, y_def, g = _trace(f, parent, carry_leaves, carry_def, x_leaves, x_def,
                                      length, reverse)
    value = g.apply("loop", *operands, params=(body,))
    _bound(body, operands)
    return (_unflatten(carry_def, body.finals(value)),
            _unflatten(y_def, body.stacked(value)))


def fori_loop(lower, upper, body_fun, init_val, *, checkpoint=None):
    """``jax.lax.fori_loop``: ``val = body_fun(i, val)`` for ``i`` in ``range(lower,
    upper)``, compiled as one loop.  ``i`` is a float scalar of the graph's dtype (exact for
    integers below 2⁵³): it computes, it does not index — read per-step arrays with
    ``scan``'s ``xs``."""
    for name, v in (("lower", lower), ("upper", upper)):
        if not ops.is_int(v):
            raise TypeError(f"fori_loop: {name} must be a Python int (the trip count is "
                            f"static), got {v!r}")
    if upper <= lower:
        return init_val

    def step(carry, _):
        i, val = carry
        return (i + 1.0, body_fun(i, val)), None
    (_, val), _ = scan(step, (float(lower), init_val), length=int(upper - lower),
                       checkpoint=checkpoint)
    return val


def _trace(f, parent, carry_leaves, carry_def, x_leaves, x_def, length, reverse):
    """Trace ``f`` into a body graph; returns (body, the loop's operands, ys' structure,
    the graph the loop lives in)."""
    dtype = parent.dtype if parent is not None else np.dtype(np.float64)
    bg = BodyGraph(dtype, parent)
    carry = [bg.input(bg.fresh_name(f"carry{k}" if len(carry_leaves) > 1 else "carry"),
                      np.shape(c) if not isinstance(c, Expr) else c.shape)
             for k, c in enumerate(carry_leaves)]
    xs = [bg.input(bg.fresh_name(f"x{k}" if len(x_leaves) > 1 else "x"), np.shape(x)[1:],
                   _slice_dtype(x, dtype)) for k, x in enumerate(x_leaves)]
    stack = _active.__dict__.setdefault("bodies", [])
    stack.append(bg)
    try:
        result = f(_unflatten(carry_def, carry), _unflatten(x_def, xs))
    finally:
        stack.pop()
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise GraphError(f"the scan body must return (carry, y), got {type(result).__name__}")
    out_leaves, out_def = _flatten(result[0], "the carry the body returns")
    if out_def != carry_def:
        raise GraphError(f"the body returns a carry of structure {_show(out_def)}; it "
                         f"entered as {_show(carry_def)}: return the same structure")
    carry_out = []
    for k, (c, e) in enumerate(zip(carry, out_leaves)):
        e = bg._operand(e, bg.dtype)
        if e.shape != c.shape or e.dtype != c.dtype:
            raise ShapeError(f"carry {k}: the body returns shape {e.shape} "
                             f"({e.dtype}); it entered with {c.shape} ({c.dtype}): a "
                             "carry keeps its shape and dtype from step to step")
        carry_out.append(e)
    y_leaves, y_def = _flatten(result[1], "y")
    ys = [bg._operand(y, bg.dtype) for y in y_leaves]
    for y in ys:
        if y.dtype.kind != "f":
            raise GraphError(f"a scan's y must be a float value, got {y.dtype}")
    g = bg.parent
    if g is None:
        raise GraphError("scan reads no graph expression: give init or xs a node of your "
                         "graph (g.const(1.0) will do), or read one in the body")
    if g.dtype != dtype:          # the graph was found only when the body read it
        return _trace(f, g, carry_leaves, carry_def, x_leaves, x_def, length, reverse)
    body = make_body(bg, carry, xs, [Expr(bg, bg.captured[o.id]) for o in bg.outer],
                     carry_out, ys, length, reverse)
    inits = []
    for c, leaf in zip(carry, carry_leaves):
        e = g._operand(leaf if isinstance(leaf, Expr) else np.asarray(leaf, g.dtype), g.dtype)
        if e.dtype != c.dtype:
            raise GraphError(f"the carry {leaf!r} has dtype {e.dtype}; the graph's is "
                             f"{g.dtype}: carries are floats of the graph's dtype")
        inits.append(e)
    outer_xs = [g._operand(x if isinstance(x, Expr) else g.array(x), g.dtype)
                for x in x_leaves]
    for x, inner in zip(outer_xs, xs):
        if x.dtype != inner.dtype:
            raise GraphError(f"xs of dtype {x.dtype} in a {g.dtype} graph: pass float xs "
                             "of the graph's dtype")
    operands = body.operands(g, [*inits, *outer_xs, *bg.outer])
    return body, operands, y_def, g


def _slice_dtype(x, dtype):
    """The dtype a step's slice of ``x`` has in the body (as the graph would hold x)."""
    dt = x.dtype if isinstance(x, Expr) else np.asarray(x).dtype
    if dt.kind in "iu":
        return INDEX
    return dt if dt.kind == "f" and dt.itemsize in (4, 8) else dtype


def _bound(body: Body, operands: list) -> None:
    """An index input of the body bounds its operand as an index of the graph would."""
    nodes = body.graph.attrs
    for i, operand in zip([*body.carry, *body.xs, *body.consts], operands):
        bound = nodes[i].get("bound")
        if bound is None:
            continue
        if operand.op == "array":
            value = operand.params[0].value
            if value.size and (value.min() < -bound or value.max() >= bound):
                raise IndexError(f"an index read in the scan body is out of bounds for an "
                                 f"axis of size {bound}")
        else:
            operand.graph.set_attr(operand.id, "bound",
                                   min(operand._attrs.get("bound", bound), bound))


def _length(x_leaves, length) -> int:
    lengths = set()
    for x in x_leaves:
        shape = x.shape if isinstance(x, Expr) else np.shape(x)
        if not shape:
            raise ShapeError("each of xs needs a leading axis to scan along; got a scalar")
        lengths.add(shape[0])
    if length is not None:
        if not ops.is_int(length) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        lengths.add(int(length))
    if not lengths:
        raise GraphError("scan needs xs or length= (the number of steps)")
    if len(lengths) > 1:
        raise ShapeError(f"scan: xs' leading axes and length disagree: {sorted(lengths)}")
    return lengths.pop()


def _empty(f, init, carry_leaves, carry_def, x_leaves, parent):
    """No step: the carry as given, and ys with a leading axis of 0 (shapes from a trace)."""
    if parent is None:
        raise GraphError("scan of length 0 reads no graph expression")
    probe = scan(f, init, [x[:1] if isinstance(x, Expr) else np.asarray(x)[:1]
                           for x in x_leaves] if x_leaves else None, length=1)
    _, ys = probe
    y_leaves, y_def = _flatten(ys, "y")
    return init, _unflatten(y_def, [parent.broadcast_to(parent.const(0.0), (0, *y.shape[1:]))
                                      for y in y_leaves])


def _checkpointed(f, init, xs, length, k, reverse):
    """``length`` steps as an outer loop over blocks of ``k`` (and a last, shorter one):
    the outer loop stores one carry per block; its VJP recomputes each block."""
    blocks, rest = divmod(length, k)
    x_leaves, x_def = _flatten(xs, "xs")
    head = _unflatten(x_def, [x[:blocks * k].reshape((blocks, k, *x.shape[1:]))
                              for x in map(_as_expr_like, x_leaves)]) if x_leaves else None
    tail = _unflatten(x_def, [x[blocks * k:] for x in map(_as_expr_like, x_leaves)]) \
        if x_leaves else None

    def block(carry, x_block):
        return scan(f, carry, x_block, length=k, reverse=reverse)
    carry, tail_ys = init, None
    if rest and reverse:
        carry, tail_ys = scan(f, carry, tail, length=rest, reverse=True)
    carry, ys = scan(block, carry, head, length=blocks, reverse=reverse)
    if rest and not reverse:
        carry, tail_ys = scan(f, carry, tail, length=rest)
    y_leaves, y_def = _flatten(ys, "y")
    y_leaves = [y.reshape((blocks * k, *y.shape[2:])) for y in y_leaves]
    if tail_ys is not None:
        y_leaves = [y.graph.concatenate([y, t]) for y, t in
                    zip(y_leaves, _flatten(tail_ys, "y")[0])]
    return carry, _unflatten(y_def, y_leaves)


def _as_expr_like(x):
    return x if isinstance(x, Expr) else np.asarray(x)


# ---- trees of values (tuples, lists, dicts), as jax's pytrees -----------------------------
def _flatten(tree, what):
    """(leaves, structure): tuples, lists and dicts (by sorted key) hold leaves; None is an
    empty tree; anything else is a leaf (an Expr, a number, an array)."""
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        leaves, defs = [], []
        for t in tree:
            sub, d = _flatten(t, what)
            leaves += sub
            defs.append((len(sub), d))
        return leaves, (type(tree), tuple(defs))
    if isinstance(tree, dict):
        keys = sorted(tree)
        leaves, defs = [], []
        for key in keys:
            sub, d = _flatten(tree[key], what)
            leaves += sub
            defs.append((len(sub), d))
        return leaves, (dict, tuple(keys), tuple(defs))
    if isinstance(tree, (bool, str)) or not isinstance(tree, (Expr, int, float, np.ndarray,
                                                             np.floating, np.integer)):
        raise TypeError(f"{what}: {tree!r} is not a graph expression, a number or an array")
    return [tree], "leaf"


def _unflatten(structure, leaves):
    leaves = list(leaves)
    if structure is None:
        return None
    if structure == "leaf":
        return leaves[0]
    if structure[0] is dict:
        _, keys, defs = structure
        out, at = {}, 0
        for key, (n, d) in zip(keys, defs):
            out[key] = _unflatten(d, leaves[at:at + n])
            at += n
        return out
    kind, defs = structure
    out, at = [], 0
    for n, d in defs:
        out.append(_unflatten(d, leaves[at:at + n]))
        at += n
    return kind(out)


def _show(structure) -> str:
    if structure is None:
        return "None"
    if structure == "leaf":
        return "x"
    if structure[0] is dict:
        return "{" + ", ".join(f"{k!r}: {_show(d)}" for k, (_, d) in
                               zip(structure[1], structure[2])) + "}"
    inner = ", ".join(_show(d) for _, d in structure[1])
    return f"({inner})" if structure[0] is tuple else f"[{inner}]"


__all__ = ["scan", "fori_loop", "Body", "BodyGraph"]
