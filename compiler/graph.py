"""The expression DAG: nodes u_i with operators f_i, held in a networkx graph.

Node ``i`` carries ``op``, ``args`` (operand ids, in slot order), ``params``,
``shape``, ``dtype`` and an optional ``name``; edge ``(j, i)`` carries the operand
``slot``, so ``x * x`` is two edges.  Structurally equal nodes are one node
(hash-consing), and a few algebraic identities (``x·1``, ``x+0``, constant
operands) are folded as nodes are made, so the reverse graph starts lean.
"""
from __future__ import annotations

import math
import numbers

import networkx as nx
import numpy as np
import sympy as sp

from . import ops
from .errors import GraphError, ShapeError
from .ops import ELEMENTWISE, STRUCTURED

__all__ = ["Graph", "Expr", "GraphError", "ShapeError", "ancestors", "as_dtype", "DTYPES"]

DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def ancestors(g: "Graph", ids) -> set:
    """The node ids ``ids`` depend on, themselves included (an explicit stack: any depth)."""
    need, stack = set(), list(ids)
    nodes = g.nx.nodes
    while stack:
        i = stack.pop()
        if i not in need:
            need.add(i)
            stack.extend(nodes[i]["args"])
    return need


def as_dtype(dtype) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _check_shape(shape) -> tuple:
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise ShapeError(f"shape must be a tuple of ints, got {shape!r}") from None
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 0
               for n in shape):
        raise ShapeError(f"shape must be a tuple of non-negative ints, got {shape!r}")
    shape = tuple(int(n) for n in shape)
    _check_size(shape)
    return shape


# Byte offsets and sizes in generated code are 64-bit: every node's buffer stays far
# below 2⁶³ bytes (8-byte elements), so no size or offset can wrap.
MAX_ELEMENTS = 2**59


def _check_size(shape: tuple) -> None:
    if math.prod(shape) > MAX_ELEMENTS:
        raise ShapeError(f"shape {shape} has too many elements ({math.prod(shape):.3g}; "
                         "at most 2**59, which no memory holds)")


class Expr:
    """A handle on one node of a :class:`Graph`; operators build new nodes.

    >>> g = Graph()
    >>> u1, u2 = g.input("u1"), g.input("u2")
    >>> u2 * (u1 + u2)
    u4 = mul(u2, u3)  shape=() float64
    """

    __slots__ = ("graph", "id")
    __array_priority__ = 1000  # so ndarray + Expr defers to Expr

    def __init__(self, graph: "Graph", id: int):
        self.graph, self.id = graph, id

    # -- what the node is
    @property
    def _attrs(self):
        return self.graph.nx.nodes[self.id]

    shape = property(lambda self: self._attrs["shape"])
    dtype = property(lambda self: self._attrs["dtype"])
    op = property(lambda self: self._attrs["op"])
    params = property(lambda self: self._attrs["params"])
    args = property(lambda self: tuple(Expr(self.graph, a) for a in self._attrs["args"]))
    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: math.prod(self.shape))

    @property
    def name(self) -> str:
        given = self._attrs.get("name")
        if given:
            return given
        auto = f"u{self.id}"
        # a user's input or node named like another node's automatic name keeps it; the
        # automatic one steps aside (u3′ is no identifier, so no user name can take it)
        return auto if auto not in self.graph._user_names else auto + "′"

    @property
    def symbol(self) -> sp.Symbol:
        return self.graph.symbol(self.id)

    def __repr__(self):
        if self.op == "input":
            rhs = "input"
        elif self.op == "const":
            rhs = f"const({self.params[0]!r})"
        else:
            rhs = f"{self.op}({', '.join(a.name for a in self.args)})"
        return f"{self.name} = {rhs}  shape={self.shape} {DTYPES[self.dtype]}"

    def __hash__(self):
        return hash((id(self.graph), self.id))

    def __eq__(self, other):
        return isinstance(other, Expr) and other.graph is self.graph and other.id == self.id

    def __bool__(self):
        raise TypeError("an Expr has no truth value: it is a symbolic node")

    # -- building
    def apply(self, op, *args, params=()):
        return self.graph.apply(op, self, *args, params=params)

    def named(self, name: str) -> "Expr":
        """Give this node a display name (``z`` instead of ``u3``); returns it."""
        if not isinstance(name, str) or not name.isidentifier():
            raise GraphError(f"a node name must be a Python identifier, got {name!r}")
        if self.op != "input":
            self.graph.nx.nodes[self.id]["name"] = name
            self.graph._user_names.add(name)
            self.graph._symbols.clear()     # automatic names may have stepped aside
        return self

    def __add__(self, o): return self.graph.apply("add", self, o)
    def __radd__(self, o): return self.graph.apply("add", o, self)
    def __sub__(self, o): return self.graph.apply("sub", self, o)
    def __rsub__(self, o): return self.graph.apply("sub", o, self)
    def __mul__(self, o): return self.graph.apply("mul", self, o)
    def __rmul__(self, o): return self.graph.apply("mul", o, self)
    def __truediv__(self, o): return self.graph.apply("div", self, o)
    def __rtruediv__(self, o): return self.graph.apply("div", o, self)
    def __pow__(self, o): return self.graph.apply("pow", self, o)
    def __rpow__(self, o): return self.graph.apply("pow", o, self)
    def __neg__(self): return self.graph.apply("neg", self)
    def __pos__(self): return self
    def __abs__(self): return self.graph.apply("abs", self)
    # comparisons are 0/1 masks (numpy's bool arrays as numbers; see ops.py); == stays
    # identity, since nodes are dictionary keys: write eq(a, b) for the elementwise test
    def __lt__(self, o): return self.graph.apply("lt", self, o)
    def __le__(self, o): return self.graph.apply("le", self, o)
    def __gt__(self, o): return self.graph.apply("gt", self, o)
    def __ge__(self, o): return self.graph.apply("ge", self, o)

    def clamp(self, min=None, max=None):
        """PyTorch's clamp (numpy's clip): slopes 1 inside [min, max], bounds included."""
        out = self if min is None else self.graph.apply("clamp_min", self, min)
        return out if max is None else self.graph.apply("clamp_max", out, max)

    clip = clamp
    def __matmul__(self, o): return self.graph.matmul(self, o)
    def __rmatmul__(self, o): return self.graph.matmul(o, self)

    def sum(self, axes=None, keepdims=False):
        return self.graph.sum(self, axes, keepdims)

    def mean(self, axes=None, keepdims=False):
        axes = ops.normalize_axes(axes, self.ndim)
        count = math.prod(self.shape[a] for a in axes)
        # the mean of no elements is nan, as in numpy and PyTorch
        return self.graph.sum(self, axes, keepdims) * (1.0 / count if count else math.nan)

    def max(self, axes=None, keepdims=False, *, axis=None):
        return self.graph.amax(self, axes if axis is None else axis, keepdims)

    def min(self, axes=None, keepdims=False, *, axis=None):
        return self.graph.amin(self, axes if axis is None else axis, keepdims)

    def reshape(self, *shape):
        return self.graph.reshape(self, shape[0] if len(shape) == 1 else shape)

    view = reshape

    def transpose(self, perm=None):
        return self.graph.transpose(self, perm)

    @property
    def T(self):
        return self.graph.transpose(self, None)

    def broadcast_to(self, shape):
        return self.graph.broadcast_to(self, shape)


class Graph:
    """A DAG of operator nodes ``u_i``, numbered 1, 2, … in creation order.

    >>> g = Graph()
    >>> u1, u2 = g.input("u1"), g.input("u2")
    >>> u4 = u2 * (u1 + u2)
    >>> f = g.compile(outputs=[u4], wrt=[u1, u2])
    >>> f(u1=2.0, u2=3.0)
    15.0
    >>> f.vjp(2.0, 3.0, seed=1.0)
    (15.0, (3.0, 8.0))
    """

    def __init__(self, dtype=np.float64):
        self.nx = nx.MultiDiGraph()
        self.dtype = as_dtype(dtype)
        self._interned: dict[tuple, int] = {}
        self._inputs: dict[str, int] = {}
        self._user_names: set = set()       # names given by the user (inputs, named nodes)
        self._symbols: dict[int, sp.Symbol] = {}

    def __len__(self):
        return self.nx.number_of_nodes()

    def __repr__(self):
        return f"<Graph: {len(self)} nodes, inputs {list(self._inputs)}>"

    def _repr_svg_(self):
        """Jupyter: the forward graph as SVG (None, so text is shown, without Graphviz)."""
        from .explain import GraphvizMissing, render, to_dot
        sinks = [Expr(self, i) for i in self.nx if self.nx.out_degree(i) == 0]
        try:
            return render(to_dot(self, sinks), "svg").decode()
        except GraphvizMissing:
            return None

    @property
    def inputs(self) -> list[Expr]:
        return [Expr(self, i) for i in self._inputs.values()]

    def node(self, id_or_name) -> Expr:
        if isinstance(id_or_name, str):
            if id_or_name in self._inputs:
                return Expr(self, self._inputs[id_or_name])
            for i, attrs in self.nx.nodes(data=True):
                if attrs.get("name") == id_or_name or f"u{i}" == id_or_name:
                    return Expr(self, i)
            raise KeyError(f"no node named {id_or_name!r}")
        if id_or_name not in self.nx:
            raise KeyError(f"no node u{id_or_name}")
        return Expr(self, id_or_name)

    def symbol(self, id: int) -> sp.Symbol:
        if id not in self._symbols:
            self._symbols[id] = sp.Symbol(Expr(self, id).name, real=True)
        return self._symbols[id]

    # ---- leaves ------------------------------------------------------------------
    def input(self, name: str, shape=(), dtype=None) -> Expr:
        """A run-time input: a scalar by default, any static ``shape``."""
        if not isinstance(name, str) or not name.isidentifier():
            raise GraphError(f"input name must be a Python identifier, got {name!r}")
        if name in self._inputs:
            raise GraphError(f"input {name!r} already exists in this graph")
        dtype = as_dtype(dtype if dtype is not None else self.dtype)
        node = self._new("input", (), (), _check_shape(shape), dtype, name=name)
        self._inputs[name] = node
        self._user_names.add(name)
        self._symbols.clear()
        return Expr(self, node)

    def const(self, value, dtype=None) -> Expr:
        """A scalar constant (broadcast where it meets a tensor)."""
        if isinstance(value, Expr):
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            else:
                raise TypeError(f"a graph constant must be a real number, got {value!r}; "
                                "pass tensors as inputs (Graph.input)")
        value = float(value)
        # -0.0 and 0.0 are different constants in IEEE arithmetic (1/-0.0 is -inf); they
        # compare equal, so the interning key carries the sign
        return Expr(self, self._intern("const", (), (value,), (), as_dtype(dtype or self.dtype),
                                       sign=math.copysign(1.0, value)))

    # ---- node making -----------------------------------------------------------------
    def _new(self, op, args, params, shape, dtype, name=None) -> int:
        _check_size(shape)      # shapes made by broadcasting and matmul too
        id = len(self) + 1
        self.nx.add_node(id, op=op, args=tuple(args), params=params, shape=shape, dtype=dtype)
        if name:
            self.nx.nodes[id]["name"] = name
        for slot, a in enumerate(args):
            self.nx.add_edge(a, id, key=slot, slot=slot)
        return id

    def _intern(self, op, args, params, shape, dtype, sign=None) -> int:
        key = (op, tuple(args), params, shape, dtype.char, sign)
        id = self._interned.get(key)
        if id is None:
            id = self._interned[key] = self._new(op, args, params, shape, dtype)
        return id

    def _operand(self, x, dtype) -> Expr:
        if isinstance(x, Expr):
            if x.graph is not self:
                raise GraphError(f"{x.name} belongs to another graph; build each expression "
                                 "from one Graph's inputs")
            return x
        return self.const(x, dtype)

    def apply(self, op: str, *args, params=()) -> Expr:
        """Apply operator ``op`` (a name from the operator table) to ``args``."""
        if op in STRUCTURED:
            return getattr(self, op)(*args, *params) if op != "matmul" else self.matmul(*args)
        if op not in ELEMENTWISE:
            raise GraphError(f"unknown operator {op!r}; known: {sorted(ELEMENTWISE)}"
                             f" and {sorted(STRUCTURED)}")
        spec = ELEMENTWISE[op]
        if len(args) != spec.arity:
            raise GraphError(f"{op} takes {spec.arity} operand(s), got {len(args)}")
        exprs = [a for a in args if isinstance(a, Expr)]
        if not exprs:
            raise GraphError(f"{op} needs at least one graph expression operand")
        dtype = np.result_type(*[e.dtype for e in exprs])
        args = [self._operand(a, dtype) for a in args]
        shape = ops.broadcast_shapes(*[a.shape for a in args])
        if op == "broadcast":
            shape = ops.broadcast_shapes(shape, params[0])
            if shape == args[0].shape:
                return args[0]
        folded = _fold(self, op, args, shape, dtype)
        if folded is not None:
            return folded
        return Expr(self, self._intern(op, [a.id for a in args], params, shape, dtype))

    def broadcast_to(self, x: Expr, shape) -> Expr:
        shape = _check_shape(shape)
        if ops.broadcast_shapes(x.shape, shape) != shape:
            raise ShapeError(f"cannot broadcast {x.name} of shape {x.shape} to {shape}")
        return self.apply("broadcast", x, params=(shape,))

    def _structured(self, op, args, params) -> Expr:
        args = [self._operand(a, self.dtype) for a in args]
        spec = STRUCTURED[op]
        shape = spec.shape([a.shape for a in args], params)
        dtype = np.result_type(*[a.dtype for a in args])
        return Expr(self, self._intern(op, [a.id for a in args], params, shape, dtype))

    def sum(self, x: Expr, axes=None, keepdims=False) -> Expr:
        x = self._operand(x, self.dtype)
        axes = ops.normalize_axes(axes, x.ndim)
        if not axes:
            return x
        if x.op == "const" or (x.op == "broadcast" and x.args[0].op == "const"):
            base = x if x.op == "const" else x.args[0]
            count = math.prod(x.shape[a] for a in axes)
            out_shape = STRUCTURED["sum"].shape([x.shape], (axes, bool(keepdims)))
            return self.broadcast_to(self.const(base.params[0] * count, x.dtype), out_shape) \
                if out_shape else self.const(base.params[0] * count, x.dtype)
        return self._structured("sum", [x], (axes, bool(keepdims)))

    def amax(self, x: Expr, axes=None, keepdims=False) -> Expr:
        """The largest entry over ``axes`` (NaN if any is); ties share the gradient."""
        return self._extreme("amax", x, axes, keepdims)

    def amin(self, x: Expr, axes=None, keepdims=False) -> Expr:
        return self._extreme("amin", x, axes, keepdims)

    def _extreme(self, op, x, axes, keepdims) -> Expr:
        x = self._operand(x, self.dtype)
        axes = ops.normalize_axes(axes, x.ndim)
        if any(x.shape[a] == 0 for a in axes):
            raise ShapeError(f"{op} of {x.name} over an empty axis: a zero-size reduction "
                             "has no identity (numpy and PyTorch refuse it too)")
        if not axes:
            return x
        return self._structured(op, [x], (axes, bool(keepdims)))

    def reshape(self, x: Expr, shape) -> Expr:
        x = self._operand(x, self.dtype)
        shape = ops.reshape_target(x.shape, shape)
        if shape == x.shape:
            return x
        if x.op == "reshape":  # reshape of a reshape is one reshape
            x = x.args[0]
            if shape == x.shape:
                return x
        if x.op == "const":
            return self.broadcast_to(x, shape)
        if x.op == "transpose":  # a reshape reads a contiguous buffer: copy the strided view
            x = self.apply("copy", x)
        return self._structured("reshape", [x], (shape,))

    def transpose(self, x: Expr, perm=None) -> Expr:
        x = self._operand(x, self.dtype)
        perm = tuple(reversed(range(x.ndim))) if perm is None else tuple(int(p) for p in perm)
        if sorted(perm) != list(range(x.ndim)):
            raise ShapeError(f"transpose of {x.name} (shape {x.shape}) needs a permutation "
                             f"of {tuple(range(x.ndim))}, got {perm}")
        if perm == tuple(range(x.ndim)):
            return x
        if x.op == "transpose":  # compose the two permutations
            inner = x.params[0]
            return self.transpose(x.args[0], tuple(inner[p] for p in perm))
        return self._structured("transpose", [x], (perm,))

    def matmul(self, a, b) -> Expr:
        """``a @ b`` for 1-D and 2-D operands (1-D ones as in numpy)."""
        a, b = self._operand(a, self.dtype), self._operand(b, self.dtype)
        if a.ndim not in (1, 2) or b.ndim not in (1, 2):
            raise ShapeError(f"matmul takes 1-D or 2-D operands, got {a.shape} @ {b.shape}")
        if a.shape[-1] != b.shape[0]:
            raise ShapeError(f"matmul of {a.name} {a.shape} and {b.name} {b.shape}: inner "
                             f"dimensions {a.shape[-1]} and {b.shape[0]} differ")
        a2 = self._implicit_reshape(a, (1, a.shape[0])) if a.ndim == 1 else a
        b2 = self._implicit_reshape(b, (b.shape[0], 1)) if b.ndim == 1 else b
        out = self._structured("matmul", [a2, b2], ())
        shape = a.shape[:-1] + b.shape[1:]
        return self._implicit_reshape(out, shape) if shape != out.shape else out

    def _implicit_reshape(self, x: Expr, shape) -> Expr:
        """A reshape the user did not write (1-D matmul's): marked, so reports hide it."""
        made = len(self)
        out = self.reshape(x, shape)
        if out.id > made:
            self.nx.nodes[out.id]["implicit"] = True
        return out

    # ---- importing sympy ------------------------------------------------------------------
    @classmethod
    def from_sympy(cls, exprs, inputs, shapes=None, dtype=np.float64):
        """Build a graph from SymPy expressions; shared subexpressions become shared nodes.

        ``inputs`` lists the free symbols (in the order they become inputs); ``shapes``
        optionally maps a symbol name to a shape (elementwise meaning, as numpy).

        >>> import sympy as sp
        >>> x, y = sp.symbols("x y")
        >>> g, outs = Graph.from_sympy([sp.sin(x) * y], [x, y])
        >>> outs[0]
        u4 = mul(y, u3)  shape=() float64
        """
        from .sympy_import import build
        g = cls(dtype)
        shapes = shapes or {}
        env = {}
        for s in inputs:
            if not isinstance(s, sp.Symbol):
                raise GraphError(f"inputs must be sympy Symbols, got {s!r}")
            env[s] = g.input(s.name, shape=shapes.get(s.name, ()))
        single = isinstance(exprs, sp.Basic)
        outs = build([exprs] if single else list(exprs), env, g)
        return g, (outs[0] if single else outs)

    def splice(self, src: "Graph", outputs, mapping: dict) -> list:
        """Copy ``outputs`` of graph ``src`` into this graph, its inputs replaced by
        ``mapping`` (src input id -> Expr here).  Iterative; shared nodes stay shared."""
        need = ancestors(src, [o.id for o in outputs])
        new = {}
        for i in sorted(need):
            a = src.nx.nodes[i]
            if i in mapping:
                new[i] = mapping[i]
            elif a["op"] == "input":
                raise GraphError(f"splice: input {Expr(src, i).name} has no replacement")
            elif a["op"] == "const":
                new[i] = self.const(a["params"][0], a["dtype"])
            else:
                new[i] = self.apply(a["op"], *[new[x] for x in a["args"]], params=a["params"])
        return [new[o.id] for o in outputs]

    def copy(self) -> "Graph":
        other = Graph(self.dtype)
        other.nx = self.nx.copy()
        other._interned = dict(self._interned)
        other._inputs = dict(self._inputs)
        other._user_names = set(self._user_names)
        return other

    # ---- derivatives and evaluation (implemented in their own modules) ---------------------
    def grad(self, outputs, wrt, seeds=None):
        """Reverse pass: the adjoints ``P`` of ``wrt`` as nodes of this graph."""
        from .autodiff import grad
        return grad(self, outputs, wrt, seeds)

    def local_jacobian(self, source: Expr, target: Expr):
        """``J_{source→target} = ∂target/∂source`` along the edge(s) between them."""
        from .autodiff import local_jacobian
        return local_jacobian(self, source, target)

    def local_jacobian_expr(self, source: Expr, target: Expr) -> Expr:
        """``J_{source→target}`` of an elementwise operator as a node of this graph."""
        from .autodiff import instantiate
        if target.op not in ELEMENTWISE:
            raise GraphError(f"{target.name} = {target.op}(…) is structured: its J is a linear "
                             "map, not an elementwise expression")
        terms = [instantiate(target.op, s, target.args, target, self)
                 for s, a in enumerate(target.args) if a.id == source.id]
        if not terms:
            raise GraphError(f"{source.name} is not an operand of {target.name}")
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        return total if isinstance(total, Expr) else self.const(total)

    def adjoints(self, of, wrt=None, at=None, seed=None):
        """The adjoint equations ``P_i = Σ_j P_j·J_{i→j}``, in reverse topological order."""
        from .autodiff import adjoint_table
        return adjoint_table(self, of, wrt, at, seed)

    def evaluate(self, outputs, inputs: dict):
        """Numpy reference evaluation (no compilation): for checking, not speed."""
        from .evaluate import evaluate
        return evaluate(self, outputs, inputs)

    def compile(self, outputs, wrt=(), inputs=None, **options):
        """Lower ``outputs`` (and, with ``wrt``, their VJP) to native code.

        The compiled function's parameters are ``inputs`` if given, else the inputs the
        outputs use, in the order they were created."""
        from .pipeline import compile_graph
        return compile_graph(self, outputs, wrt, inputs, **options)


def _fold(g: Graph, op, args, shape, dtype):
    """Rewrites at construction time that are exact in IEEE arithmetic, for every operand
    value including inf, nan and signed zeros: constant operands (evaluated in the
    graph's dtype), x·1, x/1, x·(−1), x − 0, x + (−0), x**1, x**0, −(−x).

    Not folded, because IEEE disagrees somewhere: x + 0 (−0 + 0 is +0), 0 − x (0 − 0 is
    +0, −0 is not), 0·x (inf·0 is nan, −1·0 is −0), x − x, x/x."""
    consts = [a.params[0] if a.op == "const" else None for a in args]
    if all(c is not None for c in consts) and op not in ("broadcast", "copy"):
        value = ops.evaluate(op, consts, (), (), dtype)
        if np.isfinite(value) and shape == ():
            return g.const(float(value), dtype)
        return None

    def same(x):  # x itself, broadcast to the result's shape when needed
        return x if x.shape == shape else g.broadcast_to(x, shape)

    def is_(c, value):  # c is exactly ``value``, sign of zero included
        return c is not None and c == value and math.copysign(1, c) == math.copysign(1, value)

    if op == "neg" and args[0].op == "neg":
        return args[0].args[0]
    if len(args) != 2:
        return None
    (a, b), (ca, cb) = args, consts
    if op == "add":
        if is_(ca, -0.0): return same(b)
        if is_(cb, -0.0): return same(a)
    elif op == "sub":
        if is_(cb, 0.0): return same(a)
        if is_(ca, -0.0): return g.apply("neg", same(b))
    elif op == "mul":
        if ca == 1: return same(b)
        if cb == 1: return same(a)
        if ca == -1: return g.apply("neg", same(b))
        if cb == -1: return g.apply("neg", same(a))
    elif op == "div":
        if cb == 1: return same(a)
    elif op == "pow":
        if cb == 1: return same(a)
        if cb == 0: return same(g.const(1.0, dtype))
    return None
