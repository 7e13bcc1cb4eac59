"""Tensor: eager numpy values that record what ran, for a compiled backward.

Every operation computes its value with numpy at once (so Python control flow
works) and, when gradients are wanted, records a :class:`Node` — the ``grad_fn``
— holding a builder that re-creates the operation on compiler expressions.
``backward`` turns the recorded subgraph into a ``symgrad.compiler.Graph`` and
runs its compiled reverse graph (see ``autograd.py``).
"""
from __future__ import annotations

import itertools
import math
import numbers
import threading
import warnings
import weakref

import numpy as np

from symgrad.compiler import functions, ops
from symgrad.compiler.backend.function import is_masked
from symgrad.compiler.graph import UFUNCS, array_digest

from .device import CPU, check_device, device
from .dtypes import TYPE_NAMES, as_dtype, bool_, float32, float64, int64, result_type
from .random import generator as _generator


# ---- grad mode (per thread, as in PyTorch) -----------------------------------------
class _GradMode(threading.local):
    enabled = True
    trace = None        # the compile() trace running in this thread (runtime/trace.py)


_mode = _GradMode()


def is_grad_enabled() -> bool:
    return _mode.enabled


class _SetGrad:
    """Context manager and decorator that sets grad mode."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        self.prev, _mode.enabled = _mode.enabled, self.enabled
        return self

    def __exit__(self, *exc):
        _mode.enabled = self.prev

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with _SetGrad(self.enabled):
                return fn(*args, **kwargs)
        return wrapper


class no_grad(_SetGrad):
    def __init__(self):
        super().__init__(False)


class enable_grad(_SetGrad):
    def __init__(self):
        super().__init__(True)


class set_grad_enabled(_SetGrad):
    """Sets grad mode at once (``torch.set_grad_enabled(False)``), or for a ``with`` block."""

    def __init__(self, mode: bool):
        super().__init__(bool(mode))
        self.prev, _mode.enabled = _mode.enabled, self.enabled

    def __enter__(self):
        return self


# ---- the recorded graph -----------------------------------------------------------------
_sequence = itertools.count()


class Version:
    """The version counter a tensor shares with its views (PyTorch's ``_version``): every
    in-place change adds one.  ``users`` are the live nodes that read a leaf of it."""

    __slots__ = ("n", "users")

    def __init__(self):
        self.n = 0
        self.users = None      # a WeakSet of Nodes, made on first use


class AccumulateGrad:
    """What ``next_functions`` shows for a leaf that requires grad, as in PyTorch."""

    def __init__(self, variable):
        self.variable = variable

    def __repr__(self):
        return "<AccumulateGrad object>"


class Node:
    """One recorded operation: PyTorch's ``grad_fn``.

    Its operands are kept as *edges*, fixed when it was recorded: the operand's own
    ``grad_fn`` for a computed tensor, the tensor itself (at ``versions[k]``) for a leaf.
    So an in-place change that gives a tensor a new ``grad_fn`` later does not change what
    this node reads.  ``saved`` are the tensors PyTorch's backward of this operation keeps
    (box, version, description): changing one in place makes ``backward`` raise as PyTorch
    does.  ``snapshots`` hold a leaf's values from before an in-place change, for the
    compiled backward, which recomputes the forward from the leaves."""

    __slots__ = ("name", "key", "build", "inputs", "edges", "versions", "saved", "snapshots",
                 "dtype", "freed", "seq", "retained", "hooks", "indices", "custom",
                 "__weakref__")

    def __init__(self, name, key, build, inputs, dtype=None, indices=()):
        self.name = name          # "MulBackward0"
        self.key = key            # hashable: what the compiled backward depends on
        self.build = build        # (graph, *operand exprs) -> expr
        self.inputs = inputs      # operand Tensors (for _saved_* and next_functions)
        self.edges = [t.grad_fn or t for t in inputs]
        self.versions = [t._version_box.n for t in inputs]
        self.saved = ()
        self.snapshots = None
        self.dtype = dtype
        self.freed = False
        self.retained = None      # the tensor that called retain_grad (a weakref)
        self.hooks = None
        self.indices = indices    # operand positions that are integer index arrays
        self.custom = None        # (call, output number, value): an autograd.Function output
        self.seq = next(_sequence)  # creation order: a topological order of all nodes
        for t in inputs:
            if t.grad_fn is None:  # a leaf: in-place changes must keep what we read
                box = t._version_box
                if box.users is None:
                    box.users = weakref.WeakSet()
                box.users.add(self)

    def __repr__(self):
        return f"<{self.name} object at {hex(id(self))}>"

    @property
    def next_functions(self):
        return tuple((e if isinstance(e, Node) else
                      (AccumulateGrad(e) if e._requires_grad else None), 0) for e in self.edges)

    def __getattr__(self, name):
        # grad_fn._saved_self / _saved_other / _saved_result, as far as people print them
        if name.startswith("_saved_"):
            slots = {"_saved_self": 0, "_saved_other": 1, "_saved_exponent": 1}
            if name in slots and slots[name] < len(self.inputs):
                return self.inputs[slots[name]]
        raise AttributeError(f"'{self.name}' object has no attribute '{name}'")

    def register_hook(self, hook):
        raise NotImplementedError("hooks on grad_fn nodes are not supported; register the "
                                  "hook on the tensor (tensor.register_hook)")

    def check_saved(self):
        """PyTorch's error when a tensor this operation saved was changed in place."""
        for box, version, what in self.saved:
            if box.n != version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified "
                    f"by an inplace operation: {_describe(*what)} is at version {box.n}; "
                    f"expected "
                    f"version {version} instead. Hint: clone() the tensor before changing it "
                    "in place, or make the change out of place.")


def _describe(dtype, shape, producer) -> str:
    """PyTorch's words for a saved tensor: ``[torch.FloatTensor [3]], which is output 0 of
    ExpBackward0,`` (made only when the error is raised)."""
    what = f"[torch.{_type_name(dtype)}Tensor [{', '.join(map(str, shape))}]]"
    return what + (f", which is output 0 of {producer}," if producer else "")


def _save(node, out, saves, inputs):
    """Record what the backward of ``node`` keeps, as PyTorch's derivative formulas do:
    ``saves`` is a set of operand positions and/or "out"; "cross" saves each tensor
    operand when the other one requires grad (mul, matmul)."""
    saved = []
    if saves == "cross":
        saves = {k for k in range(len(inputs)) if inputs[1 - k]._requires_grad}
    for k in saves:
        t, producer = (out, node.name) if k == "out" else \
            (inputs[k], inputs[k].grad_fn and inputs[k].grad_fn.name)
        saved.append((t._version_box, t._version_box.n,
                      (t._data.dtype, t._data.shape, producer)))
    node.saved = tuple(saved)


def _record(value, name, key, build, inputs, saves=(), view_of=None, indices=()) -> "Tensor":
    """A new tensor holding ``value``; with a grad_fn when an input requires grad.
    ``inputs`` are Tensors (the hot path: every recorded operation comes here).
    ``saves``: what PyTorch's backward keeps (see ``_save``); ``view_of``: the tensor whose
    memory ``value`` shares, whose version counter the result then shares; ``indices``: the
    operand positions that are integer index arrays (graph inputs of dtype int64, so new
    index values do not mean a new compile)."""
    out = Tensor._make(value)
    if view_of is not None:
        out._version_box = view_of._version_box
        out._base = view_of._base if view_of._base is not None else view_of
    if _mode.enabled:
        for t in inputs:
            if t._requires_grad:
                out._requires_grad = True
                node = out.grad_fn = Node(name, key, build, inputs, value.dtype, indices)
                if saves:
                    _save(node, out, saves, inputs)
                break
    if _mode.trace is not None:
        _mode.trace.record(out, build, inputs, indices)
    return out


# ---- formatting as PyTorch does ------------------------------------------------------------
def _format_values(a: np.ndarray):
    finite = a[np.isfinite(a)]
    nonzero = np.abs(finite[finite != 0])
    sci = nonzero.size and (nonzero.max() / nonzero.min() > 1000 or nonzero.max() > 1e8)
    if finite.size and np.all(finite == np.ceil(finite)):
        fmt = (lambda v: f"{v:.4e}") if sci else (lambda v: f"{v:.0f}.")
    else:
        sci = sci or (nonzero.size and nonzero.min() < 1e-4)
        fmt = (lambda v: f"{v:.4e}") if sci else (lambda v: f"{v:.4f}")

    def one(v):
        if np.isnan(v):
            return "nan"
        if np.isinf(v):
            return "inf" if v > 0 else "-inf"
        return fmt(float(v))
    return one


def format_array(a: np.ndarray, indent: int) -> str:
    if a.dtype.kind != "f":
        one = str
    else:
        one = _format_values(a)
    if a.ndim == 0:
        return one(a.item())
    width = max(len(one(v)) for v in a.flat) if a.size else 0

    def rows(x, depth):
        if x.ndim == 1:     # PyTorch wraps a row at 80 columns
            per_line = max(1, (80 - indent - depth) // (width + 2))
            items = [one(v).rjust(width) for v in x]
            lines = [", ".join(items[k:k + per_line]) for k in range(0, len(items), per_line)]
            return "[" + (",\n" + " " * (indent + depth + 1)).join(lines) + "]"
        sep = "," + "\n" * (x.ndim - 1) + " " * (indent + depth + 1)
        return "[" + sep.join(rows(s, depth + 1) for s in x) + "]"
    return rows(a, 0)


class Tensor:
    """An n-dimensional array that can record operations for automatic differentiation.

    >>> x = tensor([0.0, 2.0, 8.0], requires_grad=True)
    >>> y = tensor([5.0, 1.0, 7.0], requires_grad=True)
    >>> z = x * y
    >>> z.backward(tensor([1.0, 1.0, 1.0]))
    >>> x.grad, y.grad
    (tensor([5., 1., 7.]), tensor([0., 2., 8.]))
    """

    __array_priority__ = 1000

    def __init__(self, *data, requires_grad=False):
        # Tensor(ndarray) inside the runtime; torch.Tensor([...]) / torch.Tensor(2, 3) from
        # users (float32, as PyTorch's legacy constructor)
        arr = data[0] if len(data) == 1 and isinstance(data[0], np.ndarray) else None
        if arr is None:
            from .creation import legacy_tensor
            arr = legacy_tensor(data)
        self._data = arr
        self._version_box = Version()
        self._base = None
        self._grad = None
        self.grad_fn = None
        self._retain = False
        self._requires_grad = False
        self._hooks = None
        self.requires_grad = requires_grad
        if _mode.trace is not None:       # made from Python or numpy data: a constant
            _mode.trace.constant(self)

    @classmethod
    def _make(cls, value) -> "Tensor":
        t = cls.__new__(cls)
        t._data, t._grad, t.grad_fn, t._retain, t._requires_grad = value, None, None, False, False
        t._version_box, t._base, t._hooks = Version(), None, None
        if _mode.trace is not None:
            _mode.trace.born(t)
        return t

    # ---- attributes -------------------------------------------------------------------
    @property
    def requires_grad(self) -> bool:
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag):
        if flag and self._data.dtype.kind != "f":
            raise RuntimeError("only tensors of floating point dtype can require gradients "
                               f"(this one is {self._data.dtype})")
        if not flag and self.grad_fn is not None:
            raise RuntimeError("you can only change requires_grad flags of leaf variables; "
                               "use .detach() to get a tensor that does not require grad")
        self._requires_grad = bool(flag)

    def requires_grad_(self, flag=True) -> "Tensor":
        self.requires_grad = flag
        return self

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def retain_grad(self):
        if not self.requires_grad:
            raise RuntimeError("can't retain_grad on a tensor that has requires_grad=False")
        self._retain = True
        if self.grad_fn is not None:
            self.grad_fn.retained = weakref.ref(self)

    @property
    def retains_grad(self) -> bool:
        return self._retain and not self.is_leaf

    @property
    def grad(self):
        if _mode.trace is not None:
            _mode.trace.touch_grad(self)
        if self.grad_fn is not None and not self._retain and self._grad is None:
            warnings.warn(
                "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. "
                "Its .grad attribute won't be populated during backward(). If you want the "
                "gradient for a non-leaf Tensor, use .retain_grad() on it.", UserWarning,
                stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, value):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"assigned grad expected to be a Tensor or None but got grad of "
                            f"type {type(value).__name__}")
        if _mode.trace is not None:
            _mode.trace.touch_grad(self, setting=True)
        self._grad = value

    shape = property(lambda self: Size(self._data.shape))
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)

    def size(self, dim=None):
        return self.shape if dim is None else self._data.shape[dim]

    def dim(self):
        return self._data.ndim

    def numel(self):
        return self._data.size

    def __len__(self):
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self._data)

    @property
    def data(self) -> "Tensor":
        """The same memory, detached, with a version counter of its own (as in PyTorch:
        changes through ``.data`` are invisible to autograd's checks)."""
        t = Tensor._make(self._data)
        if _mode.trace is not None:
            _mode.trace.alias_of(t, self)
        return t

    @data.setter
    def data(self, value):
        value = as_tensor(value)
        if value._data.shape != self._data.shape or value._data.dtype != self._data.dtype:
            raise RuntimeError(f"x.data = y needs y of shape {tuple(self._data.shape)} and "
                               f"dtype {self._data.dtype}, got {tuple(value._data.shape)} "
                               f"{value._data.dtype}")
        if _mode.trace is not None:
            _mode.trace.set(self, _mode.trace.expr(value))
        self._data = value._data

    def detach(self) -> "Tensor":
        """The same memory and version counter, outside the graph."""
        t = Tensor._make(self._data)
        t._version_box = self._version_box
        t._base = self._base if self._base is not None else self
        if _mode.trace is not None:
            _mode.trace.alias_of(t, self)
        return t

    def detach_(self) -> "Tensor":
        if self._base is not None and self.grad_fn is not None:
            raise RuntimeError("Can't detach views in-place. Use detach() instead.")
        self.grad_fn, self._requires_grad = None, False
        return self

    def clone(self) -> "Tensor":
        return _record(self._data.copy(), "CloneBackward0", ("clone",), _identity, [self])

    def numpy(self) -> np.ndarray:
        if _mode.trace is not None:
            _mode.trace.value_read(self, ".numpy()")
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on a tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        return self._data

    def item(self) -> float:
        if _mode.trace is not None:
            _mode.trace.value_read(self, ".item()")
        if self._data.size != 1:
            raise ValueError(f"a tensor with {self._data.size} elements cannot be converted "
                             "to a Python scalar")
        return self._data.item()

    def tolist(self):
        if _mode.trace is not None:
            _mode.trace.value_read(self, ".tolist()")
        return self._data.tolist()

    def __float__(self):
        return float(self.item())

    def __array__(self, dtype=None, copy=None):
        if _mode.trace is not None:
            _mode.trace.value_read(self, "as a numpy array")
        return self._data if dtype is None else self._data.astype(dtype)

    def __repr__(self):
        body = format_array(self._data, len("tensor("))
        extras = []
        if self._data.dtype not in (float32, int64, bool_):
            extras.append(f"dtype=torch.{self._data.dtype}")   # PyTorch's text
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        # PyTorch's layout: an extra that would pass 80 columns goes on its own line
        text, last = "tensor(" + body, len("tensor(" + body.rsplit("\n", 1)[-1])
        for extra in extras:
            if last + len(extra) + 2 > 80:
                text += ",\n" + " " * len("tensor(") + extra
                last = len("tensor(") + len(extra)
            else:
                text += ", " + extra
                last += len(extra) + 2
        return text + ")"

    def __bool__(self):
        if _mode.trace is not None:
            _mode.trace.value_read(self, "its truth value, as in `if`")
        return bool(self._data)

    def __hash__(self):
        return id(self)

    # ---- in-place updates ----------------------------------------------------------------
    @property
    def _version(self) -> int:
        return self._version_box.n

    def _commit(self, result: "Tensor") -> "Tensor":
        """Write ``result`` (computed out of place from this tensor's value) into this
        tensor's memory, as PyTorch's in-place operations do: same object, same memory,
        version + 1.  When the change is recorded, this tensor takes the result's grad_fn;
        nodes recorded before keep reading the old value (their edges and snapshots)."""
        recorded = result.grad_fn is not None
        self._check_leaf()
        if result._data.shape != self._data.shape:
            raise RuntimeError(f"output with shape {list(self._data.shape)} doesn't match the "
                               f"broadcast shape {list(result._data.shape)}")
        if not np.can_cast(result._data.dtype, self._data.dtype, "same_kind"):
            raise RuntimeError(f"result type {_type_name(result._data.dtype)} can't be cast to "
                               f"the desired output type {_type_name(self._data.dtype)}")
        if recorded and self._base is not None:
            raise NotImplementedError(
                "an in-place operation that autograd records on a view (a slice, reshape or "
                "transpose of another tensor) is not supported: clone() the view first, or "
                "assign into the base tensor with indexing (base[...] = value)")
        if self.grad_fn is not None and not recorded:
            raise NotImplementedError(
                "changing a tensor that has a grad_fn in place without recording it (under "
                "no_grad) is not supported: symgrad's backward recomputes it from the leaves. "
                "Use .detach() (or clone()) and change that")
        self._bump()
        np.copyto(self._data, result._data, casting="same_kind")
        if _mode.trace is not None:
            _mode.trace.set(self, _mode.trace.expr(result))
        if recorded:
            old = self.grad_fn
            node = self.grad_fn = result.grad_fn
            if old is not None and old.retained is not None:
                node.retained, node.hooks = weakref.ref(self), self._hooks
            self._requires_grad = True
            # what PyTorch saved as "the output" is this tensor, at its new version; what
            # it saved of this tensor's old value is a copy (PyTorch clones it), so not a
            # version to check
            box, mine = result._version_box, self._version_box
            node.saved = tuple((mine, mine.n, what) if b is box else (b, v, what)
                               for b, v, what in node.saved if b is not mine)
        return self

    def _check_leaf(self):
        if self._requires_grad and self.grad_fn is None and _mode.enabled:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                               "operation. Wrap the update in `with torch.no_grad():`, or "
                               "change .data")

    def _bump(self):
        """One more version; first, live nodes that read this memory as a leaf keep a copy
        of what they read."""
        box = self._version_box
        if box.users:
            for node in list(box.users):
                if node.freed:
                    continue
                for k, e in enumerate(node.edges):
                    if type(e) is not Node and e._version_box is box and \
                            node.versions[k] == box.n:
                        if node.snapshots is None:
                            node.snapshots = {}
                        node.snapshots.setdefault(k, e._data.copy())
        box.n += 1

    def _fill(self, value, name) -> "Tensor":
        """In place: every element becomes ``value`` (an array of this shape, or a number);
        recorded as an operation whose result does not depend on the old value."""
        data = np.broadcast_to(np.asarray(value, dtype=self._data.dtype), self._data.shape)
        if self.grad_fn is None:
            self._check_leaf()
            self._bump()
            np.copyto(self._data, data)
            if _mode.trace is not None:
                _mode.trace.set(self, _mode.trace.filled(value, self._data))
            return self
        data = np.array(data)
        return self._commit(_record(data, name, ("fill", array_digest(data)),
                                    lambda g, a: g.const(data) if data.ndim == 0
                                    else g.array(data), [self]))

    def zero_(self):
        return self._fill(0, "ZeroBackward0")

    def fill_(self, value):
        return self._fill(_value(value), "FillBackward0")

    def normal_(self, mean=0.0, std=1.0, generator=None):
        draw = _generator(generator).normal(self._data.size, self._data.dtype, mean, std)
        return self._fill(draw.reshape(self._data.shape), "NormalBackward0")

    def uniform_(self, a=0.0, b=1.0, generator=None):
        draw = _generator(generator).uniform(self._data.size, self._data.dtype, a, b)
        return self._fill(draw.reshape(self._data.shape), "UniformBackward0")

    def copy_(self, src, non_blocking=False):
        src = as_tensor(src)
        value = np.broadcast_to(src._data, self._data.shape).astype(self._data.dtype)
        shape = self._data.shape
        return self._commit(_record(np.array(value), "CopyBackwards", ("copy", shape),
                                    lambda g, a, b: g.broadcast_to(b, shape), [self, src]))

    def add_(self, other, alpha=1):
        return self._commit(self + (other if alpha == 1 else _scaled(other, alpha)))

    def sub_(self, other, alpha=1):
        return self._commit(self - (other if alpha == 1 else _scaled(other, alpha)))

    def mul_(self, other):
        return self._commit(self * other)

    def div_(self, other):
        return self._commit(self / other)

    def pow_(self, other):
        return self._commit(self ** other)

    def clamp_(self, min=None, max=None):
        return self._commit(self.clamp(min, max))

    clip_ = clamp_

    def __iadd__(self, o): return self.add_(o)
    def __isub__(self, o): return self.sub_(o)
    def __imul__(self, o): return self.mul_(o)
    def __itruediv__(self, o): return self.div_(o)
    def __ipow__(self, o): return self.pow_(o)

    def __setitem__(self, index, value):
        """``x[index] = value`` in place; recorded (PyTorch's CopySlices) when grad flows."""
        value = _check_operand(value)
        wants_grad = _mode.enabled and (self._requires_grad or (
            isinstance(value, Tensor) and value._requires_grad))
        parts, _ = _index_parts(index)
        if _mode.trace is not None:
            _mode.trace.static_index(parts, "x[index] = value")
            wants_grad = True         # traced as the out-of-place update it is
        if not wants_grad and self.grad_fn is None:
            self._bump()
            self._data[parts] = _value(value)
            return
        self._commit(_index_put(self, parts, value))

    # ---- autograd entry points ---------------------------------------------------------------
    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        """Accumulate ``vᵀJ`` into the ``.grad`` of every leaf, ``v`` = ``gradient``."""
        from .autograd import backward
        backward(self, gradient, retain_graph, create_graph, inputs)

    # ---- operators --------------------------------------------------------------------------
    def __add__(self, o): return _binary("add", self, o)
    def __radd__(self, o): return _binary("add", o, self)
    def __sub__(self, o): return _binary("sub", self, o)
    def __rsub__(self, o): return _binary("sub", o, self)
    def __mul__(self, o): return _binary("mul", self, o)
    def __rmul__(self, o): return _binary("mul", o, self)
    def __truediv__(self, o): return _binary("div", self, o)
    def __rtruediv__(self, o): return _binary("div", o, self)
    def __pow__(self, o): return _binary("pow", self, o)
    def __rpow__(self, o): return _binary("pow", o, self)
    def __neg__(self): return _unary("neg", self)
    def __pos__(self): return self
    def __matmul__(self, o): return matmul(self, o)
    def __rmatmul__(self, o): return matmul(o, self)

    # comparisons are elementwise and give bool tensors, as in PyTorch (never recorded)
    def __lt__(self, o): return _compare(np.less, self, o)
    def __le__(self, o): return _compare(np.less_equal, self, o)
    def __gt__(self, o): return _compare(np.greater, self, o)
    def __ge__(self, o): return _compare(np.greater_equal, self, o)
    def __eq__(self, o): return _compare(np.equal, self, o)
    def __ne__(self, o): return _compare(np.not_equal, self, o)
    lt, le, gt, ge, eq, ne = __lt__, __le__, __gt__, __ge__, __eq__, __ne__

    def __and__(self, o): return _logical(np.logical_and, np.bitwise_and, self, o)
    def __or__(self, o): return _logical(np.logical_or, np.bitwise_or, self, o)
    def __xor__(self, o): return _logical(np.logical_xor, np.bitwise_xor, self, o)
    __rand__, __ror__, __rxor__ = __and__, __or__, __xor__

    def __invert__(self):
        if self._data.dtype.kind not in "biu":
            raise TypeError("~ (bitwise not) is only supported for integer and bool tensors")
        return Tensor._make(~self._data)

    def logical_not(self):
        return Tensor._make(np.logical_not(self._data))

    def equal(self, other) -> bool:
        """True when both have the same shape and the same values (torch.equal)."""
        other = as_tensor(other)
        return self._data.shape == other._data.shape and bool(np.all(self._data == other._data))

    def allclose(self, other, rtol=1e-05, atol=1e-08, equal_nan=False) -> bool:
        return bool(np.allclose(self._data, _value(other), rtol, atol, equal_nan))

    def isnan(self): return Tensor._make(np.isnan(self._data))
    def isinf(self): return Tensor._make(np.isinf(self._data))
    def isfinite(self): return Tensor._make(np.isfinite(self._data))

    def any(self, dim=None, keepdim=False):
        return Tensor._make(np.any(self._data, axis=dim, keepdims=keepdim))

    def all(self, dim=None, keepdim=False):
        return Tensor._make(np.all(self._data, axis=dim, keepdims=keepdim))

    def __getitem__(self, index):
        return _getitem(self, index)

    def clamp(self, min=None, max=None):
        """PyTorch's clamp: slopes 1 inside [min, max], the bounds included; tensor bounds
        are torch.maximum / torch.minimum (the gradient shared at ties, as there)."""
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
        if isinstance(min, Tensor) or isinstance(max, Tensor):
            out = self if min is None else self.maximum(min)
            return out if max is None else out.minimum(max)
        lo, hi = (None if v is None else _check_operand(v) for v in (min, max))
        value = self._data
        if lo is not None:
            value = np.maximum(value, lo)   # NaN stays NaN, as in PyTorch
        if hi is not None:
            value = np.minimum(value, hi)
        return _composite("ClampBackward1", ("clamp", lo, hi), lambda g, a: a.clamp(lo, hi),
                          [self], value, saves=(0,))

    clip = clamp

    def unsqueeze(self, dim):
        (axis,) = ops.normalize_axes(dim, self.ndim + 1)
        return _record(np.expand_dims(self._data, axis), "UnsqueezeBackward0",
                       ("unsqueeze", axis), lambda g, a: a.expand_dims(axis), [self],
                       view_of=self)

    def squeeze(self, dim=None):
        if dim is not None and self._data.shape[ops.normalize_axes(dim, self.ndim)[0]] != 1:
            return self          # PyTorch leaves an axis of size > 1 alone
        axes = None if dim is None else ops.normalize_axes(dim, self.ndim)
        return _record(np.squeeze(self._data, axes), "SqueezeBackward0", ("squeeze", axes),
                       lambda g, a: a.squeeze(axes), [self], view_of=self)

    def flatten(self, start_dim=0, end_dim=-1):
        if self.ndim == 0:
            return self.reshape(1)
        s, e = ops.normalize_axes((start_dim, end_dim), self.ndim)
        shape = self._data.shape
        return self.reshape(shape[:s] + (math.prod(shape[s:e + 1]),) + shape[e + 1:])

    def expand(self, *sizes):
        sizes = _shape(sizes)
        lead = len(sizes) - self.ndim
        shape = tuple(self._data.shape[k - lead] if n == -1 else n
                      for k, n in enumerate(sizes))
        value = np.broadcast_to(self._data, shape)
        return _record(value, "ExpandBackward0", ("expand", shape),
                       lambda g, a: g.broadcast_to(a, shape), [self], view_of=self)

    def expand_as(self, other): return self.expand(*other.shape)
    def view_as(self, other): return self.view(*other.shape)
    def reshape_as(self, other): return self.reshape(*other.shape)

    def repeat(self, *sizes):
        sizes = _shape(sizes)
        x = self.reshape((1,) * (len(sizes) - self.ndim) + tuple(self._data.shape))
        for axis, n in enumerate(sizes):
            if n != 1:
                x = cat([x] * n, axis)
        return x

    def flip(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        axes = ops.normalize_axes(dims, self.ndim)
        return _record(np.flip(self._data, axes).copy(), "FlipBackward0", ("flip", axes),
                       lambda g, a: a.flip(axes), [self])

    def cumsum(self, dim=None, *, axis=None, dtype=None):
        (axis,) = ops.normalize_axes(dim if axis is None else axis, self.ndim)
        return _record(_quiet(np.cumsum, self._data, axis), "CumsumBackward0", ("cumsum", axis),
                       lambda g, a: a.cumsum(axis), [self])

    def prod(self, dim=None, keepdim=False):
        axes = ops.normalize_axes(dim, self.ndim) if self.ndim else ()
        name = "ProdBackward0" if dim is None else "ProdBackward1"
        return _composite(name, ("prod", axes, keepdim), lambda g, a: a.prod(axes, keepdim),
                          [self], _quiet(np.prod, self._data, axis=axes, keepdims=keepdim),
                          saves=(0, "out"))

    def amax(self, dim=(), keepdim=False):
        """The largest entries over ``dim`` (all when empty); ties share the gradient."""
        return self._extreme("amax", dim, keepdim)

    def amin(self, dim=(), keepdim=False):
        return self._extreme("amin", dim, keepdim)

    def _extreme(self, op, dim, keepdim):
        axes = ops.normalize_axes(None if dim == () else dim, self.ndim) if self.ndim else ()
        value = getattr(np, op)(self._data, axis=axes, keepdims=keepdim)
        method = "max" if op == "amax" else "min"
        return _composite(f"A{op[1:]}Backward0", (op, axes, keepdim),
                          lambda g, a: getattr(a, method)(axes, keepdim), [self], value,
                          saves=(0, "out"))

    def max(self, dim=None, keepdim=False):
        """``x.max()``: the largest element (ties share the gradient, as PyTorch's max()).
        ``x.max(dim)``: (values, indices), the gradient going to the first largest, as
        PyTorch's max(dim).  ``x.max(other)``: torch.maximum."""
        return self._select_extreme(np.argmax, "max", dim, keepdim)

    def min(self, dim=None, keepdim=False):
        return self._select_extreme(np.argmin, "min", dim, keepdim)

    def _select_extreme(self, arg, kind, dim, keepdim):
        if isinstance(dim, Tensor):
            return self.maximum(dim) if kind == "max" else self.minimum(dim)
        if dim is None:
            if self._data.size == 0:
                raise RuntimeError(f"{kind}(): Expected reduction dim to be specified for "
                                   "input.numel() == 0. Specify the reduction dim with "
                                   "the 'dim' argument.")
            return self._extreme("a" + kind, (), False)
        (axis,) = ops.normalize_axes(dim, self.ndim)
        index = _first_extreme(self._data, arg, axis)
        values = self.gather(axis, np.expand_dims(index, axis))
        if not keepdim:
            values = values.squeeze(axis)
        else:
            index = np.expand_dims(index, axis)
        return MinMax(values, Tensor._make(index))

    def argmax(self, dim=None, keepdim=False):
        return _arg(self._data, np.argmax, dim, keepdim)

    def argmin(self, dim=None, keepdim=False):
        return _arg(self._data, np.argmin, dim, keepdim)

    def gather(self, dim, index):
        """PyTorch's gather: ``out[…, j, …] = self[…, index[…, j, …], …]`` along ``dim``."""
        (axis,) = ops.normalize_axes(dim, self.ndim)
        idx = _index_array(index)
        if idx.ndim != self.ndim:
            raise RuntimeError("Index tensor must have the same number of dimensions as input "
                               "tensor")
        value = np.take_along_axis(self._data, idx, axis)
        return _record(value, "GatherBackward0", ("gather", axis),
                       lambda g, a, i: g.take_along_axis(a, i, axis),
                       [self, Tensor._make(idx.astype(int64, copy=False))], indices=(1,))

    def masked_fill(self, mask, value):
        return where(mask, value, self)

    def add(self, other, alpha=1): return self + (other if alpha == 1 else _scaled(other, alpha))
    def sub(self, other, alpha=1): return self - (other if alpha == 1 else _scaled(other, alpha))
    def mul(self, o): return self * o
    def div(self, o): return self / o
    def pow(self, o): return self ** o
    def matmul(self, o): return matmul(self, o)
    def mm(self, o): return matmul(self, o)
    def dot(self, o): return dot(self, o)
    def __abs__(self): return self.abs()
    # exp, log, sin, tanh, sigmoid, maximum, … : one method per operator-table entry that
    # PyTorch has, made below by _method(); in-place twins (x.cos_()) by _inplace_method()

    def __floordiv__(self, o): return _unrecorded(np.floor_divide, "//", self, o)
    def __rfloordiv__(self, o): return _unrecorded(np.floor_divide, "//", o, self)
    def __mod__(self, o): return _unrecorded(np.remainder, "%", self, o)
    def __rmod__(self, o): return _unrecorded(np.remainder, "%", o, self)

    def sum(self, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
        dim, keepdim = _numpy_names(dim, keepdim, axis, keepdims)
        return reduce_sum(self if dtype is None else self.to(dtype), dim, keepdim)

    def mean(self, dim=None, keepdim=False, dtype=None, *, axis=None, keepdims=None):
        dim, keepdim = _numpy_names(dim, keepdim, axis, keepdims)
        return reduce_mean(self if dtype is None else self.to(dtype), dim, keepdim)

    def var(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        """PyTorch's var: Bessel's correction by default (``correction=1``)."""
        return _variance(self, dim, unbiased, keepdim, correction)

    def std(self, dim=None, unbiased=None, keepdim=False, *, correction=None):
        return _variance(self, dim, unbiased, keepdim, correction) ** 0.5

    def norm(self, p="fro", dim=None, keepdim=False):
        """The p-norm over ``dim`` (all elements by default): 2 (Frobenius), 1, or inf."""
        if p in ("fro", 2, 2.0):
            return _composite("NormBackward1", ("norm", dim, keepdim),
                              lambda g, x: functions.norm(x, _axes(dim, x.ndim), keepdim),
                              [self], _quiet(lambda x: np.sqrt(np.sum(
                                  x * x, axis=_axes(dim, self.ndim), keepdims=keepdim)),
                                  self._data), saves=(0, "out"))
        if p == 1:
            return self.abs().sum(dim, keepdim)
        if p == math.inf:
            return self.abs().amax(() if dim is None else dim, keepdim)
        raise NotImplementedError(f"norm with p={p!r} is not supported; use 1, 2, 'fro' or "
                                  "inf")

    def softmax(self, dim):
        return _softmax(self, dim, log=False)

    def log_softmax(self, dim):
        return _softmax(self, dim, log=True)

    def logsumexp(self, dim, keepdim=False):
        (axis,) = ops.normalize_axes(dim, self.ndim)
        m = np.max(self._data, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0)
        value = _quiet(lambda x: np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m,
                       self._data)
        if not keepdim:
            value = np.squeeze(value, axis)
        return _composite("LogsumexpBackward0", ("logsumexp", axis, keepdim),
                          lambda g, a: functions.logsumexp(a, (axis,), keepdim), [self], value,
                          saves=(0, "out"))

    def view(self, *shape):
        if len(shape) == 1 and not isinstance(shape[0], (int, tuple, list, Size)):
            return self.to(shape[0])
        return _reshape(self, shape, "ViewBackward0")

    def reshape(self, *shape):
        return _reshape(self, shape, "ViewBackward0")

    def t(self):
        return self.transpose(0, 1) if self.ndim == 2 else self

    @property
    def T(self):
        return _permute(self, tuple(reversed(range(self.ndim))), "PermuteBackward0")

    @property
    def mT(self):
        return self.transpose(-2, -1)

    def transpose(self, d0, d1):
        perm = list(range(self.ndim))
        d0, d1 = ops.normalize_axes((d0, d1), self.ndim) if d0 != d1 else (d0, d0)
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return _permute(self, tuple(perm), "TransposeBackward0")

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return _permute(self, tuple(ops.normalize_axes(dims, self.ndim)), "PermuteBackward0")

    # ---- dtypes and devices ------------------------------------------------------------------
    def float(self): return self.to(float32)
    def double(self): return self.to(float64)
    def long(self): return self.to(int64)
    def int(self): return self.to(np.int32)
    def bool(self): return self.to(bool_)
    def half(self): return self.to(np.float16)

    def type(self, dtype=None):
        if dtype is None:
            return f"torch.{_type_name(self._data.dtype)}Tensor"
        return self.to(_TYPE_NAMES.get(dtype, dtype))

    def is_floating_point(self) -> bool:
        return self._data.dtype.kind == "f"

    def to(self, *args, **kwargs):
        """``to(dtype)``, ``to(device)``, ``to(device, dtype)``, ``to(other)``: the CPU is the
        only device; a dtype change is recorded (gradients flow back in the old dtype)."""
        dtype = kwargs.pop("dtype", None)
        for a in list(args) + [kwargs.pop("device", None)]:
            if isinstance(a, Tensor):
                dtype = a._data.dtype
            elif a is None or isinstance(a, bool):
                continue
            elif _is_device(a):
                check_device(a)
            else:
                dtype = a
        unknown = set(kwargs) - {"non_blocking", "copy", "memory_format"}
        if unknown:
            raise TypeError(f"to() got unexpected keyword arguments {sorted(unknown)}")
        return self if dtype is None else _cast(self, as_dtype(dtype))

    def cpu(self):
        return self

    def cuda(self, *args, **kwargs):
        check_device("cuda")

    @property
    def device(self):
        return CPU

    is_cuda = False

    def contiguous(self, *args, **kwargs):
        return self

    def is_contiguous(self):
        return self._data.flags.c_contiguous

    # ---- hooks -------------------------------------------------------------------------------
    def register_hook(self, hook):
        """``hook(grad)`` runs when this tensor's gradient has been computed; if it returns
        a tensor, that replaces the gradient (for this tensor's ``.grad`` and what flows on,
        which makes symgrad split the compiled backward at this tensor)."""
        if not self._requires_grad:
            raise RuntimeError("cannot register a hook on a tensor that doesn't require "
                               "gradient")
        if self._hooks is None:
            self._hooks = []
        self._hooks.append(hook)
        if self.grad_fn is not None:
            self.grad_fn.hooks = self._hooks
            if self.grad_fn.retained is None:
                self.grad_fn.retained = weakref.ref(self)
        return _HookHandle(self._hooks, hook)

    # ---- formatting --------------------------------------------------------------------------
    def __format__(self, spec):
        if _mode.trace is not None:
            _mode.trace.value_read(self, "formatted as text")
        if self._data.ndim == 0:
            return format(self._data.item(), spec)
        return format(repr(self), spec)

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self._data.dtype.kind not in "iub" or self._data.size != 1:
            raise TypeError("only integer tensors of a single element can be converted to an "
                            "index")
        return int(self.item())

    def __iter__(self):
        if self._data.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[k] for k in range(len(self)))

    def __reversed__(self):
        return self.flip(0)


class Size(tuple):
    def __repr__(self):
        return f"torch.Size({list(self)})"     # PyTorch's text: programs print shapes

    def numel(self):
        return math.prod(self)


# ---- making tensors --------------------------------------------------------------------------
def _value(x):
    return x._data if isinstance(x, Tensor) else x


def _default_dtype(data) -> np.dtype:
    """PyTorch's: a numpy array keeps its dtype (float64 stays float64); Python floats
    are float32, Python ints int64, bools bool."""
    arr = np.asarray(data)
    if isinstance(data, np.ndarray) and arr.dtype.kind in "fiub":
        return as_dtype(arr.dtype) if arr.dtype.kind != "u" or arr.dtype == np.uint8 \
            else int64
    if arr.dtype.kind in "iu":
        return int64
    if arr.dtype.kind == "b":
        return bool_
    return float32


def tensor(data, dtype=None, device=None, requires_grad=False, pin_memory=False) -> Tensor:
    """A new tensor holding a copy of ``data`` (float32 for Python floats, int64 for ints,
    a numpy array's own dtype), as torch.tensor."""
    if device is not None:
        check_device(device)
    source = data
    if isinstance(data, Tensor):
        data = data._data
    elif isinstance(data, (list, tuple)) and any(isinstance(v, Tensor) for v in data):
        data = [_value(v) if not isinstance(v, (list, tuple)) else tensor(v)._data
                for v in data]
    if is_masked(data):
        raise TypeError("masked arrays are not supported: fill the masked values "
                        "(np.ma.filled) or pass the mask as a tensor")
    try:
        arr = np.array(data, dtype=as_dtype(dtype) if dtype is not None else None)
    except (ValueError, TypeError) as err:
        raise TypeError(f"cannot make a tensor from {type(data).__name__}: {err}. Nested "
                        "lists must be rectangular, of real numbers") from None
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        raise TypeError(f"cannot make a tensor from {type(data).__name__} with dtype {arr.dtype}")
    if dtype is None:           # 1e308 in float32 is inf, as torch.tensor gives, silently
        arr = _quiet(arr.astype, _default_dtype(data))
    out = Tensor(arr, requires_grad=requires_grad)
    if _mode.trace is not None and isinstance(source, Tensor):
        _mode.trace.copy_of(out, source)    # a copy of a tensor: its value, not a constant
    elif _mode.trace is not None and source is not data:
        _mode.trace.untraced(out)           # built from several tensors' values
    return out


def as_tensor(x, dtype=None, device=None) -> Tensor:
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype)
    return tensor(x, dtype=dtype, device=device)


def _shape(size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list, Size)):
        size = tuple(size[0])
    return tuple(int(n) for n in size)


# ---- recorded operations -----------------------------------------------------------------
_NAMES = {}      # operator -> PyTorch's grad_fn name, from the operator table (_method)


def _check_operand(x):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        return tensor(x)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, numbers.Integral):
        return int(x)
    if isinstance(x, numbers.Real):
        return float(x)
    raise TypeError(f"unsupported operand of type {type(x).__name__}: use a tensor or a "
                    "real number")


def _type_name(dtype) -> str:
    return TYPE_NAMES.get(np.dtype(dtype), str(dtype))


def _scaled(other, alpha):
    return (other * alpha) if isinstance(other, Tensor) else _check_operand(other) * alpha


def _compare(ufunc, a, b) -> "Tensor":
    b = _check_operand(b)
    try:
        out = Tensor._make(np.asarray(ufunc(a._data, _value(b))))
    except ValueError:
        ops.broadcast_shapes(a._data.shape, np.shape(_value(b)))
        raise
    if _mode.trace is not None:     # a mask node (0/1), as comparisons are in graphs
        op = UFUNCS[ufunc.__name__]
        if isinstance(b, Tensor):
            _mode.trace.record(out, lambda g, x, y: g.apply(op, x, y), [a, b], ())
        else:
            _mode.trace.record(out, lambda g, x: g.apply(op, x, b), [a], ())
    return out


def _logical(logical, bitwise, a, b) -> "Tensor":
    b = _check_operand(b)
    kinds = {a._data.dtype.kind, np.asarray(_value(b)).dtype.kind}
    if "f" in kinds:
        raise TypeError("&, | and ^ are only supported for integer and bool tensors")
    fn = logical if kinds == {"b"} else bitwise
    return Tensor._make(np.asarray(fn(a._data, _value(b))))


# Every operator is computed with numpy's warnings silenced, values following IEEE (nan,
# inf) as in PyTorch, which warns of none of them.  Even + and × need it (overflow,
# inf − inf, inf·0), though the context costs ~0.8 µs, more than a small product.
_BUILD1 = {}   # op -> builder of a unary node (one closure per operator, not per call)
_BUILD2 = {}


def _quiet(call, *args, **kwargs):
    """A numpy reduction or conversion with its warnings silenced: inf − inf and
    overflow give nan and inf as in PyTorch, which does not warn of them (a variance
    with too few degrees of freedom warns as PyTorch words it: ``_variance``)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)     # np.var's ddof ≥ n warning
        return call(*args, **kwargs)


def _numpy(op, *args):
    with np.errstate(all="ignore"):
        return ops.ELEMENTWISE[op].numpy(*args)


def _method(entry):
    """``Tensor.<torch name>`` for an operator-table entry PyTorch has (``x.sinh()``,
    ``x.maximum(y)``); the module function ``symgrad.runtime.<name>`` follows from it."""
    if not entry.torch:
        return
    _NAMES[entry.name] = entry.grad_fn
    if entry.torch in vars(Tensor):      # + - * / ** and friends: written out above
        return
    op = entry.name
    if entry.arity == 1:
        def method(self):
            return _unary(op, self)
    else:
        def method(self, other):
            return _binary(op, self, as_tensor(other) if not isinstance(other, numbers.Real)
                           else other)
    method.__name__ = method.__qualname__ = entry.torch
    method.__doc__ = f"Elementwise {entry.torch}: {entry.formula} (recorded for autograd)."
    setattr(Tensor, entry.torch, method)

    def inplace(self, *other):          # x.cos_(): the same, written into x (recorded)
        return self._commit(method(self, *other))
    inplace.__name__ = inplace.__qualname__ = entry.torch + "_"
    inplace.__doc__ = f"In-place {entry.torch}, as PyTorch's {entry.torch}_."
    if entry.torch + "_" not in vars(Tensor):
        setattr(Tensor, entry.torch + "_", inplace)


def _unary(op, x):
    dtype = x._data.dtype if x._data.dtype.kind == "f" or op in _INTEGRAL else float32
    value = np.asarray(_numpy(op, x._data), dtype=dtype)
    build = _BUILD1.get(op) or _BUILD1.setdefault(op, lambda g, a: g.apply(op, a))
    saves = ("out",) if op in _SAVES_RESULT else (() if op == "neg" else (0,))
    return _record(value, _NAMES[op], (op,), build, [x], saves)


# unary operations that keep an integer tensor's dtype (others give float32, as PyTorch)
_INTEGRAL = {"neg", "abs", "relu", "sign", "floor", "ceil", "round", "trunc", "square"}


def _binary(op, a, b):
    a = a if type(a) is Tensor else _check_operand(a)
    b = b if type(b) is Tensor else _check_operand(b)
    va, vb = _value(a), _value(b)
    # PyTorch's promotion: compute in the result dtype (float32 ** int64 is float32)
    dtype = result_type(a, b)
    if op == "div" and dtype.kind != "f":
        dtype = float32
    if type(va) is np.ndarray and va.dtype != dtype:
        va = va.astype(dtype)
    if type(vb) is np.ndarray and vb.dtype != dtype:
        vb = vb.astype(dtype)
    try:
        value = _numpy(op, va, vb)
    except ValueError:
        ops.broadcast_shapes(np.shape(va), np.shape(vb))  # names both shapes
        raise
    if type(value) is not np.ndarray or value.dtype != dtype:
        value = np.asarray(value, dtype=dtype)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        build = _BUILD2.get(op) or _BUILD2.setdefault(op, lambda g, x, y: g.apply(op, x, y))
        name = "PowBackward1" if op == "pow" else _NAMES[op]
        return _record(value, name, (op,), build, [a, b], _SAVES2.get(op, (0, 1)))
    saves = _SAVES_SCALAR.get(op, (0,))
    if isinstance(a, Tensor):   # tensor ∘ number: the number is part of the graph's key
        return _record(value, _NAMES[op], (op, "r", b), lambda g, x: g.apply(op, x, b), [a],
                       saves)
    name = "RsubBackward1" if op == "sub" else _NAMES[op]
    return _record(value, name, (op, "l", a), lambda g, y: g.apply(op, a, y), [b],
                   {"pow": ("out",), "div": (0,)}.get(op, saves))


# What PyTorch's backward of each operation keeps (derivatives.yaml), so that changing one
# of those tensors in place makes backward raise where PyTorch raises.  Unary operations
# keep their operand unless listed as keeping their result.
_SAVES2 = {"add": (), "sub": (), "mul": "cross", "div": (0, 1), "pow": (0, 1, "out")}
_SAVES_SCALAR = {"add": (), "sub": (), "mul": (), "div": (), "neg": ()}
_SAVES_RESULT = {"exp", "tanh", "sigmoid", "sqrt", "relu", "rsqrt", "exp2", "expm1",
                 "reciprocal"}


def _composite(name, key, build, inputs, value, saves=()):
    return _record(np.asarray(value, dtype=inputs[0]._data.dtype), name, key, build, inputs,
                   saves)


def _numpy_names(dim, keepdim, axis, keepdims):
    """PyTorch accepts numpy's ``axis=``/``keepdims=`` for ``dim``/``keepdim``."""
    return (dim if axis is None else axis), (keepdim if keepdims is None else keepdims)


def _axes(dim, ndim):
    return ops.normalize_axes(dim, ndim) if ndim else ()


def reduce_sum(x: Tensor, dim=None, keepdim=False) -> Tensor:
    axes = _axes(dim, x.ndim)
    if x._data.dtype.kind in "bu" or x._data.dtype in (np.int8, np.int16, np.int32):
        x = Tensor._make(x._data.astype(int64))     # PyTorch counts: sum of bools is int64
    value = _quiet(np.sum, x._data, axis=axes, keepdims=keepdim)
    name = "SumBackward0" if dim is None else "SumBackward1"
    return _composite(name, ("sum", axes, keepdim), lambda g, a: a.sum(axes, keepdim), [x], value)


def reduce_mean(x: Tensor, dim=None, keepdim=False) -> Tensor:
    if x._data.dtype.kind != "f":
        raise RuntimeError("mean(): could not infer output dtype. Input dtype must be either "
                           f"a floating point or complex dtype. Got: {_type_name(x.dtype)}")
    axes = _axes(dim, x.ndim)
    count = math.prod(x._data.shape[a] for a in axes)
    # np.add.reduce and one multiply: np.mean's generality costs more on small tensors
    scale = x._data.dtype.type(1 / count if count else math.nan)   # mean of nothing: nan
    value = _quiet(np.add.reduce, x._data, axis=axes, keepdims=keepdim) * scale
    name = "MeanBackward0" if dim is None else "MeanBackward1"
    return _composite(name, ("mean", axes, keepdim), lambda g, a: a.mean(axes, keepdim), [x],
                      value)


def _variance(x: Tensor, dim, unbiased, keepdim, correction):
    if unbiased is not None and correction is not None:
        raise TypeError("var/std: give unbiased= or correction=, not both")
    if isinstance(unbiased, bool) or unbiased is None:
        ddof = 1 if correction is None and unbiased in (None, True) else (
            0 if correction is None else correction)
    else:                               # var(dim, ...) written positionally as var(0)
        dim, ddof = unbiased, 1 if correction is None else correction
    axes = _axes(dim, x.ndim)
    if math.prod(x._data.shape[a] for a in axes) - ddof <= 0:       # PyTorch's warning
        warnings.warn("var(): degrees of freedom is <= 0. Correction should be strictly "
                      "less than the reduction factor (input numel divided by output "
                      "numel).", UserWarning, stacklevel=3)
    value = _quiet(np.var, x._data, axis=axes, ddof=ddof, keepdims=keepdim)
    name = "VarBackward0"
    return _composite(name, ("var", axes, keepdim, ddof),
                      lambda g, a: functions.var(a, axes, keepdim, ddof=ddof), [x], value,
                      saves=(0,))


def _softmax(x: Tensor, dim, log):
    (axis,) = ops.normalize_axes(dim, x.ndim)
    shifted = x._data - np.max(x._data, axis=axis, keepdims=True) if x._data.size else x._data
    with np.errstate(all="ignore"):
        e = np.exp(shifted)
        total = np.sum(e, axis=axis, keepdims=True)
        value = shifted - np.log(total) if log else e / total
    fn = functions.log_softmax if log else functions.softmax
    return _composite("LogSoftmaxBackward0" if log else "SoftmaxBackward0",
                      ("log_softmax" if log else "softmax", axis),
                      lambda g, a: fn(a, axis), [x], value, saves=("out",))


class MinMax(tuple):
    """What ``x.max(dim)`` returns: ``(values, indices)``, also by name."""

    def __new__(cls, values, indices):
        return super().__new__(cls, (values, indices))

    values = property(lambda self: self[0])
    indices = property(lambda self: self[1])

    def __repr__(self):
        return f"torch.return_types.max(\nvalues={self[0]!r},\nindices={self[1]!r})"


def _first_extreme(data, arg, axis):
    if data.shape[axis] == 0:
        raise IndexError("max(): Expected reduction dim to have non-zero size")
    # PyTorch's max(dim) takes a NaN when there is one
    nan = np.isnan(data) if data.dtype.kind == "f" else None
    index = arg(data, axis=axis)
    if nan is not None and nan.any():
        has = nan.any(axis=axis)
        index = np.where(has, np.argmax(nan, axis=axis), index)
    return index.astype(int64)


def _arg(data, arg, dim, keepdim):
    if dim is None:
        return Tensor._make(np.asarray(arg(data), dtype=int64))
    (axis,) = ops.normalize_axes(dim, data.ndim)
    index = _first_extreme(data, arg, axis)
    return Tensor._make(np.expand_dims(index, axis) if keepdim else index)


def _unrecorded(ufunc, symbol, a, b):
    a, b = _check_operand(a), _check_operand(b)
    if _mode.enabled and any(isinstance(t, Tensor) and t._requires_grad for t in (a, b)):
        raise NotImplementedError(f"'{symbol}' on tensors that require grad is not supported "
                                  "(its derivative is zero almost everywhere); use .detach()")
    dtype = result_type(a, b)
    return Tensor._make(np.asarray(ufunc(_value(a), _value(b)), dtype=dtype))


_TYPE_NAMES = {f"torch.{name}Tensor": dtype for dtype, name in TYPE_NAMES.items()}


def _is_device(a) -> bool:
    return isinstance(a, device) or (isinstance(a, str) and a.split(":")[0] in (
        "cpu", "cuda", "mps", "xla", "meta", "hip", "xpu"))


def clear_grad(p: "Tensor", set_to_none: bool):
    """``zero_grad`` for one tensor: drop its gradient, or zero it in place (a detached
    tensor, as PyTorch)."""
    if p.grad is None:
        if set_to_none and _mode.trace is not None:
            _mode.trace.touch_grad(p, setting=True)   # None whatever it was: say so
        return
    if set_to_none:
        p.grad = None
    else:
        p.grad = p.grad.detach()
        p.grad.zero_()


class _HookHandle:
    def __init__(self, hooks, hook):
        self.hooks, self.hook = hooks, hook

    def remove(self):
        if self.hook in self.hooks:
            self.hooks.remove(self.hook)


def _identity(g, a):
    return a


def _reshape(x: Tensor, shape, name):
    shape = ops.reshape_target(x._data.shape, _shape(shape))
    value = x._data.reshape(shape)
    return _record(value, name, ("reshape", shape), lambda g, a: a.reshape(shape), [x],
                   view_of=x if np.may_share_memory(value, x._data) else None)


def _permute(x: Tensor, perm, name):
    return _record(np.transpose(x._data, perm), name, ("transpose", perm),
                   lambda g, a: a.transpose(perm), [x], view_of=x)


def _cast(x: Tensor, dtype):
    if x._data.dtype == dtype:
        return x
    value = x._data.astype(dtype)
    if dtype.kind != "f":
        return Tensor._make(value)          # not differentiable: a new leaf
    # In the compiled backward the cast is the identity: an up-cast is exact, and the graph
    # promotes what it meets; a down-cast's rounding is not replayed (the gradient differs
    # from PyTorch's at most at the lower precision's rounding).
    return _record(value, "ToCopyBackward0", ("cast", dtype.char), _identity, [x])


def matmul(input, other) -> Tensor:
    """PyTorch's matmul: 1-D and 2-D operands, and leading batch dimensions."""
    a, b = as_tensor(input), as_tensor(other)
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError("both arguments to matmul need to be at least 1D, but they are "
                           f"{a.ndim}D and {b.ndim}D")
    inner_a, inner_b = a._data.shape[-1], b._data.shape[-2 if b.ndim > 1 else 0]
    if inner_a != inner_b:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({_dims(a)} and "
                           f"{_dims(b)})")
    dtype = result_type(a, b)
    value = np.matmul(a._data.astype(dtype, copy=False), b._data.astype(dtype, copy=False))
    name = "MmBackward0" if a.ndim == b.ndim == 2 else (
        "DotBackward0" if a.ndim == b.ndim == 1 else (
            "MvBackward0" if a.ndim == 2 and b.ndim == 1 else "BmmBackward0"))
    return _record(np.asarray(value), name, ("matmul",), _matmul_build, [a, b], "cross")


def mv(input, vec) -> Tensor:
    return matmul(input, vec)


def bmm(input, mat2) -> Tensor:
    if input.ndim != 3 or mat2.ndim != 3:
        raise RuntimeError("batch1 and batch2 must be 3D tensors")
    return matmul(input, mat2)


def outer(input, vec2) -> Tensor:
    return as_tensor(input).reshape(-1, 1) * as_tensor(vec2).reshape(1, -1)


def _matmul_build(g, x, y):
    return functions.matmul(x, y)


def _dims(t):
    return "x".join(map(str, t._data.shape))


def dot(a, b) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim != 1 or b.ndim != 1:
        raise RuntimeError(f"1D tensors expected, but got {a.ndim}D and {b.ndim}D tensors")
    if a._data.shape != b._data.shape:
        raise RuntimeError("inconsistent tensor size, expected tensor [{}] and src [{}] to "
                           "have the same number of elements, but got {} and {} elements "
                           "respectively".format(len(a), len(b), len(a), len(b)))
    return matmul(a, b)


# ---- indexing, selection and joins ---------------------------------------------------------
def _index_array(index) -> np.ndarray:
    value = index._data if isinstance(index, Tensor) else np.asarray(index)
    if value.dtype.kind not in "iub":
        raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
    if _mode.trace is not None and isinstance(index, Tensor):
        _mode.trace.index_array(value, index)
    return value


def _index_parts(index):
    """numpy index items from PyTorch's (index tensors as arrays), and a hashable key."""
    items = index if isinstance(index, tuple) else (index,)
    parts, key = [], []
    for it in items:
        if isinstance(it, slice):
            if it.step is not None and _value(it.step) <= 0:
                raise ValueError("step must be greater than zero")
            it = slice(*(None if v is None else int(_value(v))
                         for v in (it.start, it.stop, it.step)))
            parts.append(it)
            key.append(("slice", it.start, it.stop, it.step))
        elif isinstance(it, (Tensor, np.ndarray, list)):
            arr = _index_array(it)
            if arr.ndim == 0 and arr.dtype.kind in "iu":
                parts.append(int(arr))
                key.append(int(arr))
            else:
                parts.append(arr)
                key.append(("array", array_digest(arr)))
        elif isinstance(it, (numbers.Integral, np.integer)) and not isinstance(it, bool):
            parts.append(int(it))
            key.append(int(it))
        elif it is None or it is Ellipsis:
            parts.append(it)
            key.append(it)
        else:
            raise IndexError(f"only integers, slices, None, ..., and long or bool tensors are "
                             f"valid indices, got {type(it).__name__}")
    return tuple(parts), tuple(key)


def _getitem(x: Tensor, index):
    """``x[index]`` recorded: basic indices as a view (same memory and version counter, as
    in PyTorch); integer index tensors as a gather whose indices are inputs of the
    compiled backward (new indices, same compiled code); boolean masks, whose values
    decide the result's shape, as constants."""
    parts, key = _index_parts(index)
    value = x._data[parts]
    if type(value) is not np.ndarray:
        value = np.asarray(value)
    arrays = [k for k, p in enumerate(parts) if isinstance(p, np.ndarray)]
    if not arrays:
        return _record(value, _basic_index_name(parts, x._data.shape), ("getitem", key),
                       lambda g, a: a[parts], [x], view_of=x)
    ints = [k for k in arrays if parts[k].dtype.kind != "b"]
    if _mode.trace is not None:
        _mode.trace.static_index([p for p in parts if isinstance(p, np.ndarray) and
                                  p.dtype.kind == "b"], "indexing with a boolean mask")
    key = tuple(("index", parts[k].shape) if k in ints else it for k, it in enumerate(key))
    leaves = [Tensor._make(parts[k].astype(int64, copy=False)) for k in ints]

    def build(g, a, *idx):
        given = dict(zip(ints, idx))
        return a[tuple(given.get(k, p) for k, p in enumerate(parts))]
    return _record(value, "IndexBackward0", ("getitem", key), build, [x, *leaves],
                   indices=tuple(range(1, 1 + len(leaves))))


def _basic_index_name(parts, shape) -> str:
    """PyTorch's grad_fn for basic indexing: its last real step (a full slice is none)."""
    name, axis = "AliasBackward0", 0
    for p in parts:
        if isinstance(p, int):
            name, axis = "SelectBackward0", axis + 1
        elif isinstance(p, slice):
            if p.indices(shape[axis]) != (0, shape[axis], 1):
                name = "SliceBackward0"
            axis += 1
        elif p is None:
            name = "UnsqueezeBackward0"
        else:                                   # Ellipsis: the axes after it are the last
            rest = parts[next(k for k, q in enumerate(parts) if q is Ellipsis) + 1:]
            axis = len(shape) - sum(1 for q in rest if q is not None)
    return name


def _index_put(x: Tensor, parts, value) -> Tensor:
    """``x`` with ``x[parts] = value`` done out of place, recorded: the selected elements
    come from ``value`` (the last write wins for repeated indices, as numpy and PyTorch's
    CPU kernels), the others from ``x``."""
    positions = np.arange(x._data.size).reshape(x._data.shape)[parts]
    flat = np.ravel(positions)
    # the last write to each position wins
    _, last = np.unique(flat[::-1], return_index=True)
    chosen = np.sort(flat.size - 1 - last)
    where_, src = flat[chosen], chosen
    mask = np.zeros(x._data.size, bool)
    mask[where_] = True
    out = x._data.copy()
    out[parts] = _value(value)
    shape, size = x._data.shape, x._data.size
    key = ("index_put", array_digest(positions), isinstance(value, Tensor) or value)

    def build(g, a, *v):
        v = v[0] if v else g.const(float(value))
        spread = g.broadcast_to(v, positions.shape).reshape(-1) if np.shape(positions) \
            else g.broadcast_to(v, ()).reshape(1)
        placed = g.scatter_add(spread[src], where_, (size,))
        return g.apply("where", mask, placed, a.reshape(-1)).reshape(shape)
    operands = [x, value] if isinstance(value, Tensor) else [x]
    return _record(out, "CopySlices", key, build, operands)


def where(condition, input=None, other=None) -> Tensor:
    """torch.where(condition, input, other): the gradient goes to the branch chosen.  The
    condition is an input of the compiled backward, so new masks reuse its code."""
    if input is None and other is None:
        return tuple(Tensor._make(i) for i in np.nonzero(_index_array(condition)))
    cond = condition if isinstance(condition, Tensor) else Tensor._make(np.asarray(condition))
    if cond._data.dtype != bool_:
        raise RuntimeError(f"where expected condition to be a boolean tensor, but got a "
                           f"tensor with dtype {_type_name(cond.dtype)}")
    a, b = _check_operand(input), _check_operand(other)
    tensors = [t for t in (a, b) if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError("where() needs input or other to be a tensor")
    dtype = result_type(a, b)
    value = np.where(cond._data, _value(a), _value(b)).astype(dtype)
    key = ("where", *[None if isinstance(v, Tensor) else v for v in (a, b)])

    def build(g, c, *exprs):       # the tensors' nodes in their places, numbers as they are
        nodes = iter(exprs)
        return g.apply("where", g.apply("ne", c, 0), *[next(nodes) if isinstance(v, Tensor)
                                                       else v for v in (a, b)])
    return _record(value, "WhereBackward0", key, build, [cond, *tensors])


def _join(name, tensors, dim, new_axis, numpy_join, graph_join) -> Tensor:
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise RuntimeError(f"torch.{name}(): expected a non-empty list of Tensors")
    (axis,) = ops.normalize_axes(dim, tensors[0].ndim + new_axis)
    value = numpy_join([t._data for t in tensors], axis)
    return _record(value, f"{name.capitalize()}Backward0", (name, axis, len(tensors)),
                   lambda g, *xs: graph_join(xs, axis), tensors)


def cat(tensors, dim=0) -> Tensor:
    return _join("cat", tensors, dim, 0, np.concatenate, functions.concatenate)


def stack(tensors, dim=0) -> Tensor:
    return _join("stack", tensors, dim, 1, np.stack, functions.stack)


def _forget(entry):
    if entry.torch and _NAMES.pop(entry.name, None):
        for name in (entry.torch, entry.torch + "_"):
            if getattr(vars(Tensor).get(name), "__qualname__", "") == name:
                delattr(Tensor, name)


ops.on_register(_method, _forget)
