"""The expression DAG: nodes u_i with operators f_i, held in a networkx graph.

Node ``i`` carries ``op``, ``args`` (operand ids, in slot order), ``params``,
``shape``, ``dtype`` and an optional ``name``; edge ``(j, i)`` carries the operand
``slot``, so ``x * x`` is two edges.  Structurally equal nodes are one node
(hash-consing), and a few algebraic identities (``x·1``, ``x+0``, constant
operands) are folded as nodes are made, so the reverse graph starts lean.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import numbers
import threading
from collections.abc import Mapping

import networkx as nx
import numpy as np
import sympy as sp

from . import ops
from .errors import GraphError, ShapeError
from .ops import ELEMENTWISE, STRUCTURED

__all__ = ["Graph", "Expr", "GraphError", "ShapeError", "ancestors", "as_dtype", "DTYPES"]

DTYPES = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}
INDEX = np.dtype(np.int64)      # integer index arrays (inputs and constants) only index
BOOL = np.dtype(np.bool_)       # bool inputs: masks, read as 0/1 in the graph's dtype
NAMES = {**DTYPES, INDEX: "int64", BOOL: "bool"}


def array_digest(value: np.ndarray) -> str:
    """A hash of an array's shape, dtype and values (array constants are keyed by it)."""
    return hashlib.sha256(repr((value.shape, value.dtype.str)).encode()
                          + np.ascontiguousarray(value).tobytes()).hexdigest()


class ConstArray:
    """An array constant's value, read-only: compared by content (equal constants are one
    node) and written by shape alone — compiled code reads it from a buffer passed at each
    call, so the code does not depend on the values."""
    __slots__ = ("value", "digest")

    def __init__(self, value: np.ndarray):
        value = np.array(value, order="C", copy=True)
        value.setflags(write=False)
        self.value = value
        self.digest = array_digest(value)

    def __hash__(self):
        return hash(self.digest)

    def __eq__(self, other):
        return isinstance(other, ConstArray) and other.digest == self.digest

    def __repr__(self):
        return f"array{self.value.shape}"


def _refusing(message: str):
    """A writer method that raises ``message`` (the read-only dicts below)."""
    def refuse(self, *args, **kwargs):
        raise TypeError(message)
    return refuse


class _EdgeData(dict):
    """An edge's data or key dict, shared by every edge with the same slots and so
    read-only: writing to it raises instead of changing other edges.  Edges are the
    graph's own record of operands (``args`` is the other); nothing rewrites them."""
    __slots__ = ()
    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = \
        _refusing("symgrad's edge data is shared by many edges and read-only (a node's "
                  "operands are its 'args'); to annotate edges, work on networkx's own "
                  "copy: g.nx.copy()")

    def copy(self) -> dict:
        return dict(self)

    def __reduce__(self):       # pickled as its items (pickle would set them one by one)
        return (_EdgeData, (dict(self),))


@functools.lru_cache(maxsize=None)
def _slot_data(slot: int) -> _EdgeData:
    return _EdgeData(slot=slot)


@functools.lru_cache(maxsize=None)
def _slots_keys(slots: tuple) -> _EdgeData:
    """The key dict of an edge carrying operand slots ``slots`` ({slot: {"slot": slot}};
    x·x carries two on one edge), one shared dict per set of slots."""
    return _EdgeData({slot: _slot_data(slot) for slot in slots})


_READ_ONLY = ("a symgrad graph's edges are its nodes' operands ('args'), read-only through "
              "networkx; to add or change edges, work on networkx's own copy: g.nx.copy()")


class _Adjacency(_EdgeData):
    """One node's operands or consumers as networkx reads them ({neighbour: key dict}),
    made when asked; read-only, as the edges it shows are the nodes' ``args``."""
    __slots__ = ()
    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = __ior__ = \
        _refusing(_READ_ONLY)

    def __reduce__(self):
        return (dict, (dict(self),))


def _edge_keys(args, node) -> _EdgeData:
    """The key dict of the edge from ``node`` into a node with operands ``args``."""
    return _slots_keys(tuple(k for k, a in enumerate(args) if a == node))


class _Storage(Mapping):
    """networkx's adjacency storage of a symgrad graph (``nx._pred`` and ``nx._succ``,
    networkx's documented dicts of dicts), read from the nodes' ``args`` when asked.

    A node's operands are its ``args``; they are the graph's only record of its edges.
    Two dicts a node (its predecessors' and successors') were two thirds of a scalar
    graph's objects: ~450 bytes a node, and objects Python's cyclic collector walks on
    every full pass (they hold dicts, so they are always tracked).  networkx reads them
    through its views and algorithms as before; its writers raise (the graph is frozen
    for them, ``nx.freeze``, and its storage read-only: ``_READ_ONLY``)."""
    __slots__ = ("_nodes",)

    def __init__(self, nodes: dict):
        self._nodes = nodes                 # networkx's ``_node``: id -> attributes

    def __iter__(self):
        return iter(self._nodes)

    def __len__(self):
        return len(self._nodes)

    def __contains__(self, n):
        return n in self._nodes

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = \
        _refusing(_READ_ONLY)

    def __reduce__(self):
        return (type(self), (self._nodes,))


class _Operands(_Storage):
    """``nx._pred``: node -> {operand: key dict}."""
    __slots__ = ()

    def __getitem__(self, n):
        args = self._nodes[n]["args"]
        return _Adjacency({a: _edge_keys(args, a) for a in args})


class _Consumers(_Storage):
    """``nx._succ`` (and ``_adj``): node -> {consumer: key dict}, from an index of
    consumers built when first asked and extended by the nodes added since (nodes are
    numbered 1, 2, … and never removed)."""
    __slots__ = ("_of", "_indexed", "_lock")

    def __init__(self, nodes: dict):
        super().__init__(nodes)
        self._of, self._indexed, self._lock = {}, 0, threading.Lock()

    def consumers(self, n) -> list:
        """The nodes with ``n`` among their operands, each once, in id order (the index's
        own list: read, not changed)."""
        nodes = self._nodes
        if self._indexed < len(nodes):
            with self._lock:
                of, last = self._of, len(nodes)
                for i in range(self._indexed + 1, last + 1):
                    args = nodes[i]["args"]
                    if len(args) == 2:      # each operand once (x·x has one consumer)
                        if args[0] == args[1]:
                            args = args[:1]
                    elif len(args) > 2:
                        args = dict.fromkeys(args)
                    for a in args:
                        c = of.get(a)
                        if c is None:
                            of[a] = [i]
                        else:
                            c.append(i)
                self._indexed = last
        return self._of.get(n, [])

    def __getitem__(self, n):
        if n not in self._nodes:
            raise KeyError(n)
        nodes = self._nodes
        return _Adjacency({c: _edge_keys(nodes[c]["args"], n) for c in self.consumers(n)})


class _Attributes:
    """A node's attribute dict is the ``__dict__`` of one of these: a dict like any
    other (networkx's, ``{**a}``, pickle), whose keys table all nodes share — 112 bytes
    instead of 184 for the five keys every node has."""


def ancestors(g: "Graph", ids) -> set:
    """The node ids ``ids`` depend on, themselves included (an explicit stack: any depth).
    Inside ``g.remembering_ancestors()`` the same ids' set is computed once (a node's
    operands never change): the caller must not change it."""
    memo = g._ancestry
    if memo is not None:
        key = tuple(ids)
        known = memo.get(key)
        if known is not None:
            return known
    need, stack = set(), list(ids)
    nodes = g.attrs
    while stack:
        i = stack.pop()
        if i not in need:
            need.add(i)
            stack.extend(nodes[i]["args"])
    if memo is not None:
        memo[key] = need
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

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        """numpy ufuncs on expressions build graph nodes: ``np.sin(x)``, ``array * x``."""
        op = UFUNCS.get(ufunc.__name__)
        if method != "__call__" or op is None or kwargs:
            what = f"np.{ufunc.__name__}" + (f".{method}" if method != "__call__" else "")
            extra = f" with {', '.join(kwargs)}=" if kwargs and op else ""
            raise TypeError(f"{what}{extra} is not supported on graph expressions; the "
                            "supported ufuncs are " + ", ".join(sorted(UFUNCS)))
        graph = next(x.graph for x in inputs if isinstance(x, Expr))
        if op == "matmul":
            return graph.matmul(*inputs)
        return graph.apply(op, *inputs)

    def __init__(self, graph: "Graph", id: int):
        self.graph, self.id = graph, id

    # -- what the node is
    @property
    def _attrs(self):
        return self.graph.attrs[self.id]

    shape = property(lambda self: self.graph.attrs[self.id]["shape"])
    dtype = property(lambda self: self.graph.attrs[self.id]["dtype"])
    op = property(lambda self: self.graph.attrs[self.id]["op"])
    params = property(lambda self: self.graph.attrs[self.id]["params"])
    args = property(lambda self: tuple(Expr(self.graph, a)
                                       for a in self.graph.attrs[self.id]["args"]))
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
        elif self.op == "array":
            rhs = f"array({_preview(self.params[0].value)})"
        else:
            rhs = f"{self.op}({', '.join(a.name for a in self.args)})"
        return f"{self.name} = {rhs}  shape={self.shape} {NAMES[self.dtype]}"

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
            self.graph.set_attr(self.id, "name", name)
            self.graph._user_names.add(name)
            self.graph._symbols.clear()     # automatic names may have stepped aside
        return self

    def _binary(op, swap=False):
        # the common case (operands of this graph, one shape and dtype, or Python
        # numbers) goes straight to ``_plain``; anything else through ``apply``
        def method(self, o):
            args = (o, self) if swap else (self, o)
            made = self.graph._plain(op, 2, args)
            return made if made is not None else self.graph.apply(op, *args)
        method.__name__ = f"__{'r' if swap else ''}{op}__"
        return method

    __add__, __radd__ = _binary("add"), _binary("add", True)
    __sub__, __rsub__ = _binary("sub"), _binary("sub", True)
    __mul__, __rmul__ = _binary("mul"), _binary("mul", True)
    __truediv__, __rtruediv__ = _binary("div"), _binary("div", True)
    __pow__, __rpow__ = _binary("pow"), _binary("pow", True)
    del _binary

    def __neg__(self): return _negated(self.graph, self)
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

    def sum(self, axes=None, keepdims=False, *, axis=None, dtype=None, out=None):
        """numpy's sum over ``axis`` (or ``axes``; all by default)."""
        _no_dtype_out("sum", dtype, out)
        return self.graph.sum(self, _axes(axes, axis), keepdims)

    def mean(self, axes=None, keepdims=False, *, axis=None, dtype=None, out=None):
        _no_dtype_out("mean", dtype, out)
        axes = ops.normalize_axes(_axes(axes, axis), self.ndim)
        count = math.prod(self.shape[a] for a in axes)
        # the mean of no elements is nan, as in numpy and PyTorch
        return self.graph.sum(self, axes, keepdims) * (1.0 / count if count else math.nan)

    def prod(self, axes=None, keepdims=False, *, axis=None, dtype=None, out=None):
        _no_dtype_out("prod", dtype, out)
        return self.graph.prod(self, _axes(axes, axis), keepdims)

    def cumsum(self, axis=None, *, dtype=None, out=None):
        _no_dtype_out("cumsum", dtype, out)
        return self.graph.cumsum(self, axis)

    def max(self, axes=None, keepdims=False, *, axis=None, out=None):
        _no_dtype_out("max", None, out)
        return self.graph.amax(self, _axes(axes, axis), keepdims)

    def min(self, axes=None, keepdims=False, *, axis=None, out=None):
        _no_dtype_out("min", None, out)
        return self.graph.amin(self, _axes(axes, axis), keepdims)

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

    def __getitem__(self, index):
        """numpy's indexing: basic indices are views; integer arrays gather."""
        return self.graph.getitem(self, index)

    def __iter__(self):
        raise TypeError("an Expr is not iterable: index it (x[0], x[1:]) instead")

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d expression")
        return self.shape[0]

    def squeeze(self, axis=None):
        """numpy's squeeze: drop size-1 axes (all, or those in ``axis``); a view."""
        axes = [d for d, n in enumerate(self.shape) if n == 1] if axis is None else \
            ops.normalize_axes(axis, self.ndim)
        for d in axes:
            if self.shape[d] != 1:
                raise ShapeError(f"cannot squeeze axis {d} of {self.name}: it has size "
                                 f"{self.shape[d]}, not 1")
        return self.graph.index(self, tuple(("int", 0) if d in axes else ops.full_slice(n)
                                            for d, n in enumerate(self.shape)))

    def expand_dims(self, axis):
        """numpy's expand_dims (PyTorch's unsqueeze): new size-1 axes at ``axis``; a view."""
        axes = (axis,) if ops.is_int(axis) else tuple(axis)
        new = ops.normalize_axes(axes, self.ndim + len(axes))
        dims = iter(self.shape)
        return self.graph.index(self, tuple(("new",) if d in new else ops.full_slice(next(dims))
                                            for d in range(self.ndim + len(new))))

    def flip(self, axis=None):
        """numpy's flip: reversed along ``axis`` (all axes by default); a view."""
        axes = ops.normalize_axes(axis, self.ndim)
        return self.graph.index(self, tuple(("slice", n - 1, -1, n) if d in axes and n > 1
                                            else ops.full_slice(n)
                                            for d, n in enumerate(self.shape)))


def _innermost(method):
    """Build in the innermost graph among the operands: a loop body reads the nodes of
    the graphs around it (``W * c`` with ``W`` outside and ``c`` a body node is a body
    node), never the other way round."""
    @functools.wraps(method)
    def redirected(self, *args, **kwargs):
        for a in args:          # the common case, every operand here, costs one pass
            if isinstance(a, (list, tuple)) or (isinstance(a, Expr) and a.graph is not self):
                inner = self
                for e in _exprs_in(args):
                    if e.graph._depth > inner._depth:
                        inner = e.graph
                if inner is not self:
                    return getattr(inner, method.__name__)(*args, **kwargs)
                break
        return method(self, *args, **kwargs)
    return redirected


def _exprs_in(args):
    for a in args:
        if isinstance(a, Expr):
            yield a
        elif isinstance(a, (list, tuple)):
            yield from _exprs_in(a)


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

    def set_attr(self, id: int, key: str, value) -> None:
        """Set one attribute of node ``id``.  A node's attribute dict may be shared with
        the graph this one was copied from (``copy``), so it is replaced, never changed."""
        nodes = self.nx._node
        nodes[id] = {**nodes[id], key: value}

    def __init__(self, dtype=np.float64):
        self.nx = nx.MultiDiGraph()
        nodes = self.nx._node
        self.nx._succ, self.nx._pred = _Consumers(nodes), _Operands(nodes)   # (see _Storage)
        nx.freeze(self.nx)      # networkx's writers raise: nodes are added by the Graph
        # node id -> its attribute dict (op, args, params, shape, dtype): networkx's own
        # dicts (``nx._node``, its documented storage, one dict for the graph's life),
        # read without the view objects ``nx.nodes[i]`` goes through — the compiler reads
        # them millions of times
        self.attrs: dict = self.nx._node
        self.dtype = as_dtype(dtype)
        self._interned: dict[tuple, int] = {}
        self._inputs: dict[str, int] = {}
        self._user_names: set = set()       # names given by the user (inputs, named nodes)
        self._symbols: dict[int, sp.Symbol] = {}
        self._array_ids: list[int] = []     # the array constants (few: no walk finds them)

    _depth = 0      # how many loop bodies this graph is nested in (``loops.BodyGraph``)
    _ancestry = None    # ids -> their ancestors, while remembered (``remembering_ancestors``)

    @contextlib.contextmanager
    def remembering_ancestors(self):
        """Within, ``ancestors`` of the same ids is computed once: a compile asks for the
        nodes an entry reads for its cache key, its constants and its schedule (each a
        walk over the whole graph, ~20 ms at Lennard-Jones N=60)."""
        if self._ancestry is not None:
            yield
            return
        self._ancestry = {}
        try:
            yield
        finally:
            self._ancestry = None

    def __len__(self):
        return self.nx.number_of_nodes()

    def consumers(self, id: int) -> list:
        """The ids of the nodes that have node ``id`` among their operands, in id order
        (``g.nx.successors(id)``, without the dicts networkx's views are made of)."""
        return self.nx._succ.consumers(id)

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
        """A run-time input: a scalar by default, any static ``shape``.  ``dtype`` is
        float32 or float64; an integer type for an index array (``x[idx]``), which is
        checked against the sizes it indexes at every call; or bool for a mask
        (``where(m, a, b)``, ``m * x``), which operators read as 0/1 in the graph's dtype,
        as they read comparisons and bool constants."""
        if not isinstance(name, str) or not name.isidentifier():
            raise GraphError(f"input name must be a Python identifier, got {name!r}")
        if name in self._inputs:
            raise GraphError(f"input {name!r} already exists in this graph")
        kind = _dtype_kind(dtype)
        dtype = INDEX if kind in ("i", "u") else BOOL if kind == "b" else \
            as_dtype(dtype if dtype is not None else self.dtype)
        node = self._new("input", (), (), _check_shape(shape), dtype, name=name)
        self._inputs[name] = node
        self._user_names.add(name)
        self._symbols.clear()
        return Expr(self, node)

    def const(self, value, dtype=None) -> Expr:
        """A scalar constant (broadcast where it meets a tensor), or an array constant."""
        if isinstance(value, Expr):
            return value
        if isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.ndim):
            return self.array(value, dtype)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            else:
                raise TypeError(f"a graph constant must be a real number, got {value!r}; "
                                "pass tensors as inputs (Graph.input)")
        value = float(value)
        return self._const(value, as_dtype(dtype or self.dtype))

    def _const(self, value: float, dtype: np.dtype) -> Expr:
        """``const`` of a Python float in a checked dtype (the hot path).  -0.0 and 0.0 are
        different constants in IEEE arithmetic (1/-0.0 is -inf); they compare equal, so
        the interning key carries the sign."""
        return Expr(self, self._intern("const", (), (value,), (), dtype,
                                       sign=math.copysign(1.0, value)))

    def array(self, value, dtype=None) -> Expr:
        """An array constant (numpy's ``np.array`` semantics for lists).  Float arrays
        keep their dtype unless ``dtype`` is given; integer arrays are index arrays (or,
        with a float ``dtype``, numbers); bool arrays are 0/1 masks in the graph's dtype."""
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"cannot read {value!r} as an array constant ({err})") from None
        if value.dtype.kind == "b":
            value = value.astype(dtype or self.dtype)
        elif value.dtype.kind in "iu" and dtype is None:
            if value.size and (value.max() > np.iinfo(np.int64).max):
                raise TypeError("index array values must fit in int64")
            value = value.astype(INDEX)
        elif value.dtype.kind in "iuf":
            value = value.astype(as_dtype(dtype) if dtype is not None else
                                 (value.dtype if value.dtype.kind == "f" else self.dtype))
        else:
            raise TypeError(f"an array constant must hold real numbers, got dtype {value.dtype}")
        if value.dtype.kind == "f" and value.dtype not in DTYPES:
            value = value.astype(np.float64)
        shape = _check_shape(value.shape)
        if value.ndim == 0 and value.dtype != INDEX:
            return self.const(value.item(), value.dtype)
        return Expr(self, self._intern("array", (), (ConstArray(value),), shape, value.dtype))

    # ---- node making -----------------------------------------------------------------
    def _new(self, op, args, params, shape, dtype, name=None) -> int:
        """A node, written into networkx's storage (``_node``, as ``add_node`` writes it);
        its edges, from its operands, are read from ``args`` (see ``_Storage``)."""
        _check_size(shape)      # shapes made by broadcasting and matmul too
        graph = self.nx
        nodes = graph._node
        id = len(nodes) + 1
        attrs = _Attributes()       # (its __dict__: a dict that shares its keys)
        attrs.op, attrs.args, attrs.params, attrs.shape, attrs.dtype = \
            op, tuple(args), params, shape, dtype
        attrs = attrs.__dict__
        if name:
            attrs["name"] = name
        nodes[id] = attrs
        if op == "array":
            self._array_ids.append(id)
        cache = getattr(graph, "__networkx_cache__", None)
        if cache:
            cache.clear()           # as add_node does
        return id

    def _intern(self, op, args, params, shape, dtype, sign=None) -> int:
        args = tuple(args)      # one tuple for the key and the node's "args"
        key = (op, args, params, shape, dtype.char, sign)
        id = self._interned.get(key)
        if id is None:
            id = self._interned[key] = self._new(op, args, params, shape, dtype)
        return id

    def _operand(self, x, dtype) -> Expr:
        if isinstance(x, Expr):
            if x.graph is not self:
                raise GraphError(f"{x.name} belongs to another graph; build each expression "
                                 "from one Graph's inputs")
            if x.dtype == BOOL:     # a bool input, read as a 0/1 mask (one node per input)
                return Expr(self, self._intern("as_mask", (x.id,), (), x.shape, self.dtype))
            return x
        return self.const(x, dtype)

    def _index_operand(self, x, n: int, axis: int) -> Expr:
        """An integer index array (node or constant) for an axis of size ``n``: a constant
        is checked and wrapped now, an input at every call (its ``bound``)."""
        if isinstance(x, Expr):
            if x.graph is self and x.dtype == BOOL:
                raise IndexError(f"the bool input {x.name} cannot index: the result's shape "
                                 "would depend on its values; select with where(m, x, 0.0) "
                                 "or pass the positions as an int64 input")
            x = self._operand(x, self.dtype)
            if x.dtype != INDEX:
                raise IndexError(f"{x.name} ({NAMES[x.dtype]}) cannot index: index arrays "
                                 "are integer inputs or constants")
            if x.op == "array":
                x = x.params[0].value
            else:
                self.set_attr(x.id, "bound", min(x._attrs.get("bound", n), n))
                return x
        value = np.asarray(x)
        if value.dtype.kind not in "iu" and value.size:     # numpy reads [] as an index
            raise IndexError(f"arrays used as indices must be of integer (or boolean) type, "
                             f"got {value.dtype}")
        if value.size and (value.min() < -n or value.max() >= n):
            bad = value[(value < -n) | (value >= n)].flat[0]
            raise IndexError(f"index {bad} is out of bounds for axis {axis} with size {n}")
        return self.array(np.where(value < 0, value + n, value).astype(INDEX))

    @_innermost
    def apply(self, op: str, *args, params=()) -> Expr:
        """Apply operator ``op`` (a name from the operator table) to ``args``."""
        if op in STRUCTURED:
            if op == "loop":             # a loop's operands, then its body (``loops.py``)
                return self._structured("loop", args, params, params[0].graph.dtype)
            if op == "matmul":
                return self.matmul(*args)
            if op == "concatenate":
                return self.concatenate(args, *params)
            if op == "embed" and len(args) > 1:     # joined adjoints (autodiff._total)
                return self._structured("embed", args, params)
            return getattr(self, op)(*args, *params)
        if op not in ELEMENTWISE:
            raise GraphError(f"unknown operator {op!r}; known: {sorted(ELEMENTWISE)}"
                             f" and {sorted(STRUCTURED)}")
        spec = ELEMENTWISE[op]
        if not params and op != "broadcast":
            plain = self._plain(op, spec.arity, args)
            if plain is not None:
                return plain
        if len(args) != spec.arity:
            raise GraphError(f"{op} takes {spec.arity} operand(s), got {len(args)}")
        exprs = [a for a in args if isinstance(a, Expr)]
        if not exprs:
            raise GraphError(f"{op} needs at least one graph expression operand")
        for e in exprs:
            if e.dtype == INDEX:
                raise TypeError(f"{e.name} is an integer index array: it indexes (x[{e.name}], "
                                f"take) but takes no part in arithmetic ({op})")
        # numpy arrays among the operands: constants, promoted as numpy promotes
        arrays = {k: _read_array(a) for k, a in enumerate(args)
                  if isinstance(a, (np.ndarray, list, tuple))}
        dtype = np.result_type(*[e.dtype for e in exprs],
                               *[a.dtype for a in arrays.values() if a.dtype.kind != "b"])
        if dtype.kind != "f":
            dtype = np.result_type(dtype, np.float64)
        args = [a if k not in arrays else self.array(arrays[k]) if arrays[k].dtype.kind == "f"
                else self.array(arrays[k], dtype) for k, a in enumerate(args)]
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

    def _plain(self, op: str, arity: int, args) -> Expr | None:
        """``apply`` in the common case, without the general path's checks (a graph of
        scalars and the reverse pass make tens of thousands of nodes): every operand a
        float node of this graph, all of one shape and dtype, or a Python number.  None
        for anything else."""
        if len(args) != arity:
            return None
        nodes, shape, dtype = self.attrs, None, None
        if arity == 2 and type(args[0]) is Expr and type(args[1]) is Expr:
            # (the most common case: two nodes; neither a constant, nothing folds)
            a, b = args
            if a.graph is self and b.graph is self:
                at, bt = nodes[a.id], nodes[b.id]
                if at["op"] != "const" and bt["op"] != "const":
                    shape, dtype = at["shape"], at["dtype"]
                    if dtype.kind != "f" or bt["shape"] != shape or \
                            (bt["dtype"] is not dtype and bt["dtype"] != dtype):
                        return None
                    return Expr(self, self._intern(op, (a.id, b.id), (), shape, dtype))
        for a in args:
            if type(a) is Expr:
                if a.graph is not self:
                    return None
                at = nodes[a.id]
                if dtype is None:
                    shape, dtype = at["shape"], at["dtype"]
                    if dtype.kind != "f":
                        return None
                elif at["shape"] != shape or (at["dtype"] is not dtype and
                                              at["dtype"] != dtype):
                    return None
            elif type(a) is not float and type(a) is not int:
                return None
        if dtype is None:
            return None
        args = [a if type(a) is Expr else self._const(float(a), dtype) for a in args]
        folded = _fold(self, op, args, shape, dtype)
        if folded is not None:
            return folded
        return Expr(self, self._intern(op, [a.id for a in args], (), shape, dtype))

    def broadcast_to(self, x: Expr, shape) -> Expr:
        shape = _check_shape(shape)
        if ops.broadcast_shapes(x.shape, shape) != shape:
            raise ShapeError(f"cannot broadcast {x.name} of shape {x.shape} to {shape}")
        return self.apply("broadcast", x, params=(shape,))

    def _structured(self, op, args, params, dtype=None) -> Expr:
        args = [self._operand(a, self.dtype) for a in args]
        spec = STRUCTURED[op]
        shape = spec.shape([a.shape for a in args], params)
        if dtype is None and all(a.dtype == INDEX for a in args):
            raise TypeError(f"{op} of the integer index array {args[0].name}: index arrays "
                            "index (x[i]) as they are; select from the numpy array before "
                            "passing it, or pass the selection as an int64 input")
        dtype = dtype or np.result_type(*[a.dtype for a in args if a.dtype != INDEX])
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

    def prod(self, x: Expr, axes=None, keepdims=False) -> Expr:
        """The product over ``axes`` (1 over an empty axis); exact slopes at zeros."""
        x = self._operand(x, self.dtype)
        axes = ops.normalize_axes(axes, x.ndim)
        if not axes:
            return x
        return self._structured("prod", [x], (axes, bool(keepdims)))

    def cumsum(self, x: Expr, axis=None) -> Expr:
        """numpy's cumsum: running sums along ``axis`` (of x flattened if None)."""
        x = self._operand(x, self.dtype)
        if axis is None:
            x, axis = x.reshape(-1), 0
        (axis,) = ops.normalize_axes(axis, x.ndim)
        return self._structured("cumsum", [x], (axis,))

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
        if not _contiguous(x):  # a reshape reads a contiguous buffer: copy the strided view
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

    # ---- indexing and assembling -----------------------------------------------------------
    @_innermost
    def getitem(self, x: Expr, index) -> Expr:
        """``x[index]``: basic indices (a view) and integer-array indices (a gather)."""
        items = index if isinstance(index, tuple) else (index,)
        if any(_is_array_index(it) for it in items):
            return self._advanced(x, items)
        return self.index(x, index)

    def index(self, x: Expr, index) -> Expr:
        """``x[index]`` for numpy's basic indices (ints, slices with any step, None, ...):
        a view, no copy.  ``index`` may also be a spec made by ``ops.basic_index``."""
        x = self._operand(x, self.dtype)
        spec = index if _is_spec(index) else ops.basic_index(x.shape, index)
        if ops.is_identity(spec, x.shape):
            return x
        return self._structured("index", [x], (spec,))

    @_innermost
    def gather(self, x: Expr, *indices) -> Expr:
        """``x[i₀, …, i_{k−1}]`` with integer index arrays on the leading k axes (numpy's
        advanced indexing): result shape ``broadcast(i…) + x.shape[k:]``."""
        x = self._operand(x, self.dtype)
        if not indices or len(indices) > x.ndim:
            raise IndexError(f"gather takes 1 to {x.ndim} index arrays, got {len(indices)}")
        idx = [self._index_operand(i, x.shape[d], d) for d, i in enumerate(indices)]
        return self._structured("gather", [x, *idx], ())

    @_innermost
    def scatter_add(self, p: Expr, *rest) -> Expr:
        """Zeros of ``shape`` with ``p`` added at ``[i₀, …]`` (repeats add): the adjoint of
        gather.  Called as ``scatter_add(p, i₀, …, shape)``."""
        *indices, shape = rest
        p = self._operand(p, self.dtype)
        shape = _check_shape(shape)
        idx = [self._index_operand(i, shape[d], d) for d, i in enumerate(indices)]
        return self._structured("scatter_add", [p, *idx], (shape,))

    @_innermost
    def take(self, x: Expr, indices, axis=None) -> Expr:
        """numpy's take: ``x[..., indices, ...]`` along ``axis`` (of x flattened if None)."""
        x = self._operand(x, self.dtype)
        if axis is None:
            return self.gather(x.reshape(-1), indices)
        (axis,) = ops.normalize_axes(axis, x.ndim)
        return self.getitem(x, (slice(None),) * axis + (indices,))

    @_innermost
    def take_along_axis(self, x: Expr, indices, axis) -> Expr:
        """numpy's take_along_axis: ``out[…, j, …] = x[…, indices[…, j, …], …]``."""
        x = self._operand(x, self.dtype)
        (axis,) = ops.normalize_axes(axis, x.ndim)
        shape = indices.shape if isinstance(indices, Expr) else np.shape(indices)
        if len(shape) != x.ndim:
            raise IndexError(f"take_along_axis: indices need {x.ndim} dims like x, got {shape}")
        ranges = [np.arange(n).reshape([-1 if k == d else 1 for k in range(x.ndim)])
                  for d, n in enumerate(x.shape)]
        return self.gather(x, *[indices if d == axis else ranges[d] for d in range(x.ndim)])

    def _advanced(self, x: Expr, items: tuple) -> Expr:
        """numpy's advanced indexing (integer or constant boolean arrays among the items),
        as a view for the basic items, a transpose and a gather."""
        x = self._operand(x, self.dtype)
        if any(it is None for it in items):
            raise IndexError("None (newaxis) together with index arrays is not supported: "
                             "index first, then add the axis with expand_dims")
        if sum(1 for it in items if it is Ellipsis) > 1:
            raise IndexError("an index can only have a single ellipsis ('...')")
        flat = []         # items with boolean arrays turned into their integer arrays
        for it in items:
            if isinstance(it, Expr) and it.dtype != INDEX:
                raise IndexError(f"{it.name} is a {NAMES[it.dtype]} tensor: boolean masks "
                                 "from the graph select a shape known only at run time; use "
                                 "where(mask, x, 0) (or index with a constant mask)")
            if isinstance(it, (list, np.ndarray)) and _read_array(it).dtype.kind == "b":
                flat.extend(np.nonzero(it))
            else:
                flat.append(it)       # integer arrays are checked by _index_operand
        taken = sum(1 for it in flat if it is not Ellipsis)
        if taken > x.ndim:
            raise IndexError(f"too many indices: {taken} for a tensor with {x.ndim} dims")
        ellipsis = next((k for k, it in enumerate(flat) if it is Ellipsis), None)
        if ellipsis is not None:
            flat[ellipsis:ellipsis + 1] = [slice(None)] * (x.ndim - taken)
        flat += [slice(None)] * (x.ndim - len(flat))
        arrays = [d for d, it in enumerate(flat) if not isinstance(it, slice)]
        if any(np.ndim(flat[d]) if not isinstance(flat[d], Expr) else flat[d].ndim
               for d in arrays):      # a scalar index among arrays: the same, as one entry
            flat = [np.array([it]) if ops.is_int(it) else it for it in flat]
        # the slices first, as a view (every axis kept; ints are index arrays here)
        basic = self.index(x, tuple(slice(None) if d in arrays else it
                                    for d, it in enumerate(flat)))
        rest = [d for d in range(x.ndim) if d not in arrays]
        moved = self.transpose(basic, arrays + rest)
        out = self.gather(moved, *[flat[d] for d in arrays])
        # numpy: adjacent index arrays put their dims where they stood, else in front
        if arrays == list(range(arrays[0], arrays[0] + len(arrays))) and arrays[0] > 0:
            nb = out.ndim - len(rest)
            lead = list(range(nb, nb + arrays[0]))
            out = self.transpose(out, lead + list(range(nb)) +
                                 list(range(nb + arrays[0], out.ndim)))
        return out

    def embed(self, x: Expr, shape, spec) -> Expr:
        """Zeros of ``shape`` with ``x`` at ``[spec]`` (the adjoint of indexing)."""
        x = self._operand(x, self.dtype)
        shape = _check_shape(shape)
        spec = spec if _is_spec(spec) else ops.basic_index(shape, spec)
        if ops.is_identity(spec, shape):
            return x
        if ops.index_shape([shape], (spec,)) != x.shape:
            raise ShapeError(f"embed: {x.name} has shape {x.shape}, the region "
                             f"[{ops.index_text(spec)}] of {shape} does not")
        if x.op == "embed" and len(x.args) == 1 and \
                all(it[0] == "slice" for it in spec + x.params[1]):
            # a region inside a region: one embed (so it can fuse into the loop reading it)
            spec = tuple(("slice", outer[1] + inner[1] * outer[2], inner[2] * outer[2],
                          inner[3]) for outer, inner in zip(spec, x.params[1]))
            return self.embed(x.args[0], shape, spec)
        return self._structured("embed", [x], (shape, spec))

    @_innermost
    def concatenate(self, xs, axis=0) -> Expr:
        """numpy's concatenate: the operands joined along an existing ``axis``."""
        xs = [self._operand(x, self.dtype) for x in xs]
        if not xs:
            raise ShapeError("concatenate needs at least one operand")
        if any(x.ndim == 0 for x in xs):
            raise ShapeError("zero-dimensional operands cannot be concatenated; use stack")
        (axis,) = ops.normalize_axes(axis, xs[0].ndim)
        if len(xs) == 1:
            return xs[0]
        return self._structured("concatenate", xs, (axis,))

    def pad(self, x: Expr, widths, value=0.0) -> Expr:
        """numpy's pad in "constant" mode: ``widths`` is one (before, after) per axis, one
        pair for all, or one int for all."""
        x = self._operand(x, self.dtype)
        pairs = np.broadcast_to(np.asarray(widths, dtype=object), (x.ndim, 2)) \
            if x.ndim else np.zeros((0, 2), dtype=object)
        if not all(ops.is_int(w) and w >= 0 for w in pairs.flat):
            raise ShapeError(f"pad widths must be non-negative ints, got {widths!r}")
        pairs = tuple((int(lo), int(hi)) for lo, hi in pairs)
        if isinstance(value, (bool, Expr)) or not isinstance(value, numbers.Real):
            raise TypeError(f"pad value must be a real number, got {value!r}")
        if all(p == (0, 0) for p in pairs):
            return x
        return self._structured("pad", [x], (pairs, float(value)))

    @_innermost
    def matmul(self, a, b) -> Expr:
        """``a @ b`` as numpy's matmul: 1-D operands as vectors, leading dimensions as
        batches (broadcast)."""
        a, b = self._operand(a, self.dtype), self._operand(b, self.dtype)
        if a.ndim == 0 or b.ndim == 0:
            raise ShapeError(f"matmul takes operands with at least one dim, got {a.shape} @ "
                             f"{b.shape} (use * for scalars)")
        if a.ndim > 2 or b.ndim > 2:
            return self._batched_matmul(a, b)
        if a.shape[-1] != b.shape[0]:
            raise ShapeError(f"matmul of {a.name} {a.shape} and {b.name} {b.shape}: inner "
                             f"dimensions {a.shape[-1]} and {b.shape[0]} differ")
        a2 = self._implicit_reshape(a, (1, a.shape[0])) if a.ndim == 1 else a
        b2 = self._implicit_reshape(b, (b.shape[0], 1)) if b.ndim == 1 else b
        out = self._structured("matmul", [a2, b2], ())
        shape = a.shape[:-1] + b.shape[1:]
        return self._implicit_reshape(out, shape) if shape != out.shape else out

    def _batched_matmul(self, a: Expr, b: Expr) -> Expr:
        """Σ_k a[…, i, k]·b[…, k, j] as one fused loop: a broadcast product summed over k."""
        a2 = a.expand_dims(0) if a.ndim == 1 else a
        b2 = b.expand_dims(1) if b.ndim == 1 else b
        if a2.shape[-1] != b2.shape[-2]:
            raise ShapeError(f"matmul of {a.name} {a.shape} and {b.name} {b.shape}: inner "
                             f"dimensions {a2.shape[-1]} and {b2.shape[-2]} differ")
        ops.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        out = (a2.expand_dims(-1) * b2.expand_dims(-3)).sum(-2)
        if a.ndim == 1:
            out = out.squeeze(-2)
        if b.ndim == 1:
            out = out.squeeze(-1)
        return out

    def _implicit_reshape(self, x: Expr, shape) -> Expr:
        """A reshape the user did not write (1-D matmul's): marked, so reports hide it."""
        made = len(self)
        out = self.reshape(x, shape)
        if out.id > made:
            self.set_attr(out.id, "implicit", True)
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
        """A graph to add nodes to without changing this one.  A node's attributes are
        replaced, never changed (``set_attr``), so the attribute dicts are shared (the
        edges are read from them: ``_Storage``); networkx's ``copy`` would remake all."""
        other = self._like()
        other.nx.graph.update(self.nx.graph)
        other.nx._node.update(self.nx._node)
        other._interned = dict(self._interned)
        other._array_ids = list(self._array_ids)
        other._inputs = dict(self._inputs)
        other._user_names = set(self._user_names)
        return other

    def _like(self) -> "Graph":
        """An empty graph of this kind (a loop body's copy is a body too)."""
        return Graph(self.dtype)

    def fresh_name(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2``, … : the first no input or named node has."""
        taken = set(self._inputs) | self._user_names
        n, candidate = 0, name
        while candidate in taken:
            n += 1
            candidate = f"{name}_{n}"
        return candidate

    # ---- derivatives and evaluation (implemented in their own modules) ---------------------
    def grad(self, outputs, wrt, seeds=None):
        """Reverse pass: the adjoints ``P`` of ``wrt`` as nodes of this graph (a list; a
        dict keyed alike for a ``wrt`` dict).  ``outputs`` may be a dict, and ``seeds``
        then one with its keys."""
        from .autodiff import grad
        outputs, seeds = _unkeyed(outputs, seeds, "seeds")
        keys, wrt = (list(wrt), list(wrt.values())) if isinstance(wrt, dict) else (None, wrt)
        adjoints = grad(self, outputs, wrt, seeds)
        return adjoints if keys is None else dict(zip(keys, adjoints))

    def jvp(self, outputs, wrt, tangents):
        """Forward mode: the tangents ``J·u`` of ``outputs`` as nodes of this graph, when
        each ``wrt`` node moves along its tangent (a node of its shape).  A ``wrt`` dict
        takes ``tangents`` as one with its keys; an ``outputs`` dict gives the tangents as
        one with its keys."""
        from .autodiff import tangents as forward
        wrt, tangents = _unkeyed(wrt, tangents, "tangents")
        keys = list(outputs) if isinstance(outputs, dict) else None
        single = isinstance(outputs, Expr)
        out = forward(self, list(outputs.values()) if keys else outputs, wrt,
                      [self._operand(t, self.dtype) for t in
                       (tangents if isinstance(tangents, (list, tuple)) else [tangents])])
        return dict(zip(keys, out)) if keys else out[0] if single else out

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


def _unkeyed(exprs, given, what: str):
    """``exprs`` as a list when it is a dict, and ``given`` (one per expression) as a list
    in its order when that is a dict with its keys."""
    if not isinstance(exprs, dict):
        return exprs, given
    if isinstance(given, dict):
        if set(given) != set(exprs):
            raise GraphError(f"{what} as a dict needs the keys {list(exprs)}, got {list(given)}")
        given = [given[k] for k in exprs]
    return list(exprs.values()), given


# numpy ufunc -> operator (``Expr.__array_ufunc__``)
UFUNCS = {"add": "add", "subtract": "sub", "multiply": "mul", "divide": "div",
          "true_divide": "div", "negative": "neg", "power": "pow", "exp": "exp", "log": "log",
          "sqrt": "sqrt", "sin": "sin", "cos": "cos", "tan": "tan", "tanh": "tanh",
          "sinh": "sinh", "cosh": "cosh", "arcsin": "asin", "arccos": "acos",
          "arctan": "atan", "arctan2": "atan2", "arcsinh": "asinh", "arccosh": "acosh",
          "arctanh": "atanh", "log1p": "log1p", "expm1": "expm1", "log2": "log2",
          "log10": "log10", "hypot": "hypot", "square": "square", "reciprocal": "reciprocal",
          "floor": "floor", "ceil": "ceil", "rint": "round", "absolute": "abs", "fabs": "abs",
          "maximum": "maximum", "minimum": "minimum", "sign": "sign",
          "heaviside": "heaviside", "less": "lt", "less_equal": "le", "greater": "gt",
          "greater_equal": "ge", "equal": "eq", "not_equal": "ne",
          "logical_and": "logical_and", "logical_or": "logical_or",
          "logical_not": "logical_not", "matmul": "matmul"}


def _axes(axes, axis):
    if axes is not None and axis is not None:
        raise TypeError("give axis= or axes=, not both")
    return axes if axis is None else axis


def _no_dtype_out(name, dtype, out):
    if dtype is not None or out is not None:
        raise TypeError(f"{name}: dtype= and out= are not supported on graph expressions "
                        "(the result's dtype follows its operands; results are new nodes)")


def _read_array(value) -> np.ndarray:
    try:
        value = np.asarray(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"cannot read {value!r} as an array constant ({err})") from None
    if value.dtype.kind not in "biuf":
        raise TypeError(f"an array constant must hold real numbers, got dtype {value.dtype}")
    return value


def _dtype_kind(dtype) -> str:
    """numpy's kind letter of ``dtype`` ("" for None or what is not a dtype)."""
    try:
        return np.dtype(dtype).kind if dtype is not None else ""
    except TypeError:
        return ""


def _preview(value: np.ndarray) -> str:
    flat = value.ravel()
    text = ", ".join(f"{v:g}" for v in flat[:4])
    return f"[{text}{', …' if flat.size > 4 else ''}]"


def _is_array_index(item) -> bool:
    return isinstance(item, (Expr, list, np.ndarray)) and not (
        isinstance(item, np.ndarray) and item.ndim == 0 and item.dtype.kind in "iu")


def _is_spec(index) -> bool:
    return isinstance(index, tuple) and all(isinstance(it, tuple) and it and it[0] in
                                            ("slice", "int", "new") for it in index)


def _contiguous(x: Expr) -> bool:
    """Does ``x`` read its elements in row-major order from one buffer (views included)?"""
    while x.op in ("index", "reshape"):
        if x.op == "index":
            arg = x.args[0]
            # a contiguous block: leading ints, at most one partial slice with step 1
            # (or of one element), then whole axes only
            narrowed = False      # an axis after which every axis must be whole
            for it, n in zip((it for it in x.params[0] if it[0] != "new"), arg.shape):
                if n == 1:
                    continue
                if it == ops.full_slice(n):
                    narrowed = True
                    continue
                if narrowed or (it[0] == "slice" and it[2] != 1 and it[3] > 1):
                    return False
                narrowed = it[0] == "slice"
            x = arg
        else:
            x = x.args[0]
    return x.op != "transpose"


# constant operands of these fold in Python floats, which round as float64 does (IEEE
# double, to nearest): without numpy's errstate and arrays, ~20 us a fold less
_PYTHON_FOLDS = {"add": float.__add__, "sub": float.__sub__, "mul": float.__mul__,
                 "div": float.__truediv__}
_F64 = np.dtype(np.float64)


def _fold(g: Graph, op, args, shape, dtype):
    """Rewrites at construction time that are exact in IEEE arithmetic, for every operand
    value including inf, nan and signed zeros: constant operands (evaluated in the
    graph's dtype), x·1, x/1, x·(−1), x − 0, x + (−0), x**1, x**0, −(−x).

    Not folded, because IEEE disagrees somewhere: x + 0 (−0 + 0 is +0), 0 − x (0 − 0 is
    +0, −0 is not), 0·x (inf·0 is nan, −1·0 is −0), x − x, x/x."""
    nodes = g.attrs
    consts = []
    for a in args:          # (the node dicts directly: this runs for every new node)
        at = nodes[a.id] if a.graph is g else a._attrs
        consts.append(at["params"][0] if at["op"] == "const" else None)
    if None not in consts:
        if op in ("broadcast", "copy"):
            return None
        if op in _PYTHON_FOLDS and shape == () and dtype == _F64:
            try:
                value = _PYTHON_FOLDS[op](*consts)
            except ZeroDivisionError:    # x/0: numpy's inf or nan, not folded either
                return None
        else:
            value = ops.evaluate(op, consts, (), (), dtype)
        if shape == () and np.isfinite(value):
            return g._const(float(value), dtype)
        return None
    if op == "neg":
        return args[0].args[0] if args[0].op == "neg" else None
    if len(args) != 2:
        return None         # every rule below has two operands, one of them constant
    (a, b), (ca, cb) = args, consts
    if ca is None and cb is None:
        return None
    if op == "add":
        if _is(ca, -0.0): return _same(g, b, shape)
        if _is(cb, -0.0): return _same(g, a, shape)
    elif op == "sub":
        if _is(cb, 0.0): return _same(g, a, shape)
        if _is(ca, -0.0): return _negated(g, _same(g, b, shape))
    elif op == "mul":
        if ca == 1: return _same(g, b, shape)
        if cb == 1: return _same(g, a, shape)
        if ca == -1: return _negated(g, _same(g, b, shape))
        if cb == -1: return _negated(g, _same(g, a, shape))
    elif op == "div":
        if cb == 1: return _same(g, a, shape)
    elif op == "pow":
        if cb == 1: return _same(g, a, shape)
        if cb == 0: return _same(g, g.const(1.0, dtype), shape)
    return None


def _negated(g, x):
    """−x: the plain path first (the reverse pass negates thousands of scalars)."""
    made = g._plain("neg", 1, (x,))
    return made if made is not None else g.apply("neg", x)


def _same(g, x, shape):
    """x itself, broadcast to the result's shape when needed."""
    return x if x.shape == shape else g.broadcast_to(x, shape)


def _is(c, value) -> bool:
    """c is exactly ``value``, sign of zero included."""
    return c is not None and c == value and math.copysign(1, c) == math.copysign(1, value)
