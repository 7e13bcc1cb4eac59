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

import numpy as np

from symgrad.compiler import functions, ops
from symgrad.compiler.graph import array_digest

float32, float64 = np.dtype(np.float32), np.dtype(np.float64)
int64 = np.dtype(np.int64)


# ---- grad mode (per thread, as in PyTorch) -----------------------------------------
class _GradMode(threading.local):
    enabled = True


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


# ---- the recorded graph -----------------------------------------------------------------
_sequence = itertools.count()


class Node:
    """One recorded operation: PyTorch's ``grad_fn``."""

    __slots__ = ("name", "key", "build", "inputs", "freed", "seq", "__weakref__")

    def __init__(self, name, key, build, inputs):
        self.name = name          # "MulBackward0"
        self.key = key            # hashable: what the compiled backward depends on
        self.build = build        # (graph, *operand exprs) -> expr
        self.inputs = inputs      # operand Tensors
        self.freed = False
        self.seq = next(_sequence)  # creation order: a topological order of all nodes

    def __repr__(self):
        return f"<{self.name} object>"

    @property
    def next_functions(self):
        return tuple((t.grad_fn, 0) for t in self.inputs)


def _record(value, name, key, build, inputs) -> "Tensor":
    """A new tensor holding ``value``; with a grad_fn when an input requires grad.
    ``inputs`` are Tensors (the hot path: every recorded operation comes here)."""
    out = Tensor._make(value)
    if _mode.enabled:
        for t in inputs:
            if t._requires_grad:
                out._requires_grad = True
                out.grad_fn = Node(name, key, build, inputs)
                break
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
        if x.ndim == 1:
            return "[" + ", ".join(one(v).rjust(width) for v in x) + "]"
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

    def __init__(self, data, requires_grad=False):
        self._data = data
        self.grad = None
        self.grad_fn = None
        self._retain = False
        self._requires_grad = False
        self.requires_grad = requires_grad

    @classmethod
    def _make(cls, value) -> "Tensor":
        t = cls.__new__(cls)
        t._data, t.grad, t.grad_fn, t._retain, t._requires_grad = value, None, None, False, False
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

    @property
    def retains_grad(self) -> bool:
        return self._retain and not self.is_leaf

    @property
    def grad(self):
        if self.grad_fn is not None and not self._retain and self._grad is None:
            warnings.warn(
                "The .grad attribute of a Tensor that is not a leaf Tensor is being accessed. "
                "Its .grad attribute won't be populated during backward(). If you want the "
                "gradient for a non-leaf Tensor, use .retain_grad() on it.", UserWarning,
                stacklevel=2)
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad = value

    shape = property(lambda self: Size(self._data.shape))
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    device = property(lambda self: "cpu")

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
        """The same values, detached: changes to it are not recorded."""
        return Tensor._make(self._data)

    @data.setter
    def data(self, value):
        self._data = as_tensor(value)._data.astype(self._data.dtype, copy=False)

    def detach(self) -> "Tensor":
        return Tensor._make(self._data)

    def numpy(self) -> np.ndarray:
        if self.requires_grad:
            raise RuntimeError("Can't call numpy() on a tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        return self._data

    def item(self) -> float:
        if self._data.size != 1:
            raise ValueError(f"a tensor with {self._data.size} elements cannot be converted "
                             "to a Python scalar")
        return self._data.item()

    def tolist(self):
        return self._data.tolist()

    def __float__(self):
        return float(self.item())

    def __array__(self, dtype=None, copy=None):
        return self._data if dtype is None else self._data.astype(dtype)

    def __repr__(self):
        body = format_array(self._data, len("tensor("))
        extras = []
        if self._data.dtype not in (float32, int64):
            extras.append(f"dtype={self._data.dtype}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return "tensor(" + ", ".join([body] + extras) + ")"

    def __bool__(self):
        return bool(self._data)

    def __hash__(self):
        return id(self)

    # ---- in-place updates (not recorded) ---------------------------------------------------
    def _check_inplace(self):
        if self.requires_grad and self.is_leaf and _mode.enabled:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place "
                               "operation; wrap the update in `with no_grad():` or use .data")

    def _inplace(self, value):
        self._check_inplace()
        np.copyto(self._data, value, casting="same_kind")
        return self

    def zero_(self):
        return self._inplace(0)

    def fill_(self, v):
        return self._inplace(v)

    def add_(self, other, alpha=1):
        return self._inplace(self._data + alpha * _value(other))

    def sub_(self, other, alpha=1):
        return self._inplace(self._data - alpha * _value(other))

    def mul_(self, other):
        return self._inplace(self._data * _value(other))

    def div_(self, other):
        return self._inplace(self._data / _value(other))

    def copy_(self, other):
        return self._inplace(_value(other))

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

    def __lt__(self, o): return Tensor._make(self._data < _value(o))
    def __le__(self, o): return Tensor._make(self._data <= _value(o))
    def __gt__(self, o): return Tensor._make(self._data > _value(o))
    def __ge__(self, o): return Tensor._make(self._data >= _value(o))

    def __getitem__(self, index):
        return _getitem(self, index)

    def clamp(self, min=None, max=None):
        """PyTorch's clamp: slopes 1 inside [min, max], the bounds included."""
        if min is None and max is None:
            raise RuntimeError("torch.clamp: At least one of 'min' or 'max' must not be None")
        lo, hi = (None if v is None else _scalar_bound(v) for v in (min, max))
        value = self._data
        if lo is not None:
            value = np.maximum(value, lo)   # NaN stays NaN, as in PyTorch
        if hi is not None:
            value = np.minimum(value, hi)
        return _composite("ClampBackward1", ("clamp", lo, hi), lambda g, a: a.clamp(lo, hi),
                          [self], value)

    clip = clamp

    def unsqueeze(self, dim):
        (axis,) = ops.normalize_axes(dim, self.ndim + 1)
        return _record(np.expand_dims(self._data, axis), "UnsqueezeBackward0",
                       ("unsqueeze", axis), lambda g, a: a.expand_dims(axis), [self])

    def squeeze(self, dim=None):
        if dim is not None and self._data.shape[ops.normalize_axes(dim, self.ndim)[0]] != 1:
            return self          # PyTorch leaves an axis of size > 1 alone
        axes = None if dim is None else ops.normalize_axes(dim, self.ndim)
        return _record(np.squeeze(self._data, axes), "SqueezeBackward0", ("squeeze", axes),
                       lambda g, a: a.squeeze(axes), [self])

    def flip(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        axes = ops.normalize_axes(dims, self.ndim)
        return _record(np.flip(self._data, axes).copy(), "FlipBackward0", ("flip", axes),
                       lambda g, a: a.flip(axes), [self])

    def cumsum(self, dim):
        (axis,) = ops.normalize_axes(dim, self.ndim)
        return _record(np.cumsum(self._data, axis), "CumsumBackward0", ("cumsum", axis),
                       lambda g, a: a.cumsum(axis), [self])

    def prod(self, dim=None, keepdim=False):
        axes = ops.normalize_axes(dim, self.ndim) if self.ndim else ()
        name = "ProdBackward0" if dim is None else "ProdBackward1"
        return _composite(name, ("prod", axes, keepdim), lambda g, a: a.prod(axes, keepdim),
                          [self], np.prod(self._data, axis=axes, keepdims=keepdim))

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
                          lambda g, a: getattr(a, method)(axes, keepdim), [self], value)

    def gather(self, dim, index):
        """PyTorch's gather: ``out[…, j, …] = self[…, index[…, j, …], …]`` along ``dim``."""
        (axis,) = ops.normalize_axes(dim, self.ndim)
        idx = _index_array(index)
        if idx.ndim != self.ndim:
            raise RuntimeError("Index tensor must have the same number of dimensions as input "
                               "tensor")
        value = np.take_along_axis(self._data, idx, axis)
        return _record(value, "GatherBackward0", ("gather", axis, array_digest(idx)),
                       lambda g, a: g.take_along_axis(a, idx, axis), [self])

    def add(self, o): return self + o
    def sub(self, o): return self - o
    def mul(self, o): return self * o
    def div(self, o): return self / o
    def pow(self, o): return self ** o
    def matmul(self, o): return matmul(self, o)
    def mm(self, o): return matmul(self, o)
    # exp, log, sin, tanh, sigmoid, maximum, … : one method per operator-table entry that
    # PyTorch has, made below by _method()

    def sum(self, dim=None, keepdim=False):
        return reduce_sum(self, dim, keepdim)

    def mean(self, dim=None, keepdim=False):
        return reduce_mean(self, dim, keepdim)

    def norm(self):
        """The 2-norm of all elements (a recorded sqrt of a sum of squares)."""
        return _composite("NormBackward1", ("norm",), lambda g, x: ((x * x).sum()) ** 0.5,
                          [self], np.sqrt(np.sum(self._data * self._data)))

    def view(self, *shape):
        return _reshape(self, shape, "ViewBackward0")

    def reshape(self, *shape):
        return _reshape(self, shape, "ViewBackward0")

    def t(self):
        return self.transpose(0, 1) if self.ndim == 2 else self

    @property
    def T(self):
        return _permute(self, tuple(reversed(range(self.ndim))), "PermuteBackward0")

    def transpose(self, d0, d1):
        perm = list(range(self.ndim))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return _permute(self, tuple(perm), "TransposeBackward0")

    def permute(self, *dims):
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (tuple, list)) else dims
        return _permute(self, tuple(dims), "PermuteBackward0")

    def float(self):
        return _cast(self, float32)

    def double(self):
        return _cast(self, float64)

    def to(self, dtype):
        return self if isinstance(dtype, str) else _cast(self, np.dtype(dtype))


class Size(tuple):
    def __repr__(self):
        return f"symgrad.Size({list(self)})"

    def numel(self):
        return math.prod(self)


# ---- making tensors --------------------------------------------------------------------------
def _value(x):
    return x._data if isinstance(x, Tensor) else x


def _default_dtype(data) -> np.dtype:
    """PyTorch's: a numpy array keeps its dtype (float64 stays float64); Python floats
    are float32, Python ints int64."""
    arr = np.asarray(data)
    if isinstance(data, np.ndarray) and arr.dtype in (float32, float64):
        return arr.dtype
    if arr.dtype.kind in "iub":
        return int64 if arr.dtype.kind != "b" else arr.dtype
    return float32


def tensor(data, dtype=None, requires_grad=False) -> Tensor:
    """A new tensor holding a copy of ``data`` (float32 unless ``dtype`` says otherwise)."""
    if isinstance(data, Tensor):
        data = data._data
    try:
        arr = np.array(data, dtype=np.dtype(dtype) if dtype is not None else None)
    except (ValueError, TypeError) as err:
        raise TypeError(f"cannot make a tensor from {type(data).__name__}: {err}. Nested "
                        "lists must be rectangular, of real numbers") from None
    if arr.dtype == object or arr.dtype.kind not in "fiub":
        raise TypeError(f"cannot make a tensor from {type(data).__name__} with dtype {arr.dtype}")
    if dtype is None:
        arr = arr.astype(_default_dtype(data))
    return Tensor(arr, requires_grad=requires_grad)


def as_tensor(x, dtype=None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return tensor(x, dtype=dtype)


def _shape(size) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    return tuple(int(n) for n in size)


def _filled(fill, size, dtype, requires_grad):
    return Tensor(np.full(_shape(size), fill, dtype=np.dtype(dtype or float32)), requires_grad)


def ones(*size, dtype=None, requires_grad=False):
    return _filled(1.0, size, dtype, requires_grad)


def zeros(*size, dtype=None, requires_grad=False):
    return _filled(0.0, size, dtype, requires_grad)


def ones_like(t, dtype=None, requires_grad=False):
    return _filled(1.0, t.shape, dtype or t.dtype, requires_grad)


def zeros_like(t, dtype=None, requires_grad=False):
    return _filled(0.0, t.shape, dtype or t.dtype, requires_grad)


def full(size, fill_value, dtype=None, requires_grad=False):
    return _filled(fill_value, (size,), dtype, requires_grad)


class _Generator(threading.local):
    def __init__(self):
        self.rng = np.random.default_rng()


_generator = _Generator()


def manual_seed(seed: int):
    _generator.rng = np.random.default_rng(seed)
    return _generator


def randn(*size, dtype=None, requires_grad=False):
    data = _generator.rng.standard_normal(_shape(size)).astype(np.dtype(dtype or float32))
    return Tensor(data, requires_grad)


def rand(*size, dtype=None, requires_grad=False):
    data = _generator.rng.random(_shape(size)).astype(np.dtype(dtype or float32))
    return Tensor(data, requires_grad)


def uniform_(t: Tensor, low: float, high: float) -> Tensor:
    t._data[...] = _generator.rng.uniform(low, high, t._data.shape)
    return t


def arange(start, end=None, step=1, dtype=None, requires_grad=False):
    if end is None:
        start, end = 0, start
    data = np.arange(start, end, step)
    kinds = (start, end, step)
    if dtype is None:
        dtype = float32 if any(isinstance(v, float) for v in kinds) else int64
    return Tensor(data.astype(dtype), requires_grad)


def Variable(data, requires_grad=False):
    """PyTorch's old wrapper, kept as PyTorch keeps it: the tensor itself."""
    t = as_tensor(data)
    if requires_grad:
        t.requires_grad_(True)
    return t


# ---- recorded operations -----------------------------------------------------------------
_NAMES = {}      # operator -> PyTorch's grad_fn name, from the operator table (_method)


def _check_operand(x):
    if isinstance(x, Tensor):
        return x
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        if isinstance(x, np.ndarray):
            return tensor(x)
        raise TypeError(f"unsupported operand of type {type(x).__name__}: use a tensor or a "
                        "real number")
    return float(x)


# Operators that never leave their domain skip numpy's errstate context, which costs more
# than the operation itself on small tensors; every other one is computed with numpy's
# warnings silenced, values following IEEE (nan, inf) as in PyTorch.
_TOTAL = {"add", "sub", "mul", "neg", "abs", "relu", "maximum", "minimum", "sign"}
_BUILD1 = {}   # op -> builder of a unary node (one closure per operator, not per call)
_BUILD2 = {}


def _numpy(op, *args):
    if op not in _TOTAL:
        with np.errstate(all="ignore"):
            return ops.ELEMENTWISE[op].numpy(*args)
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


def _unary(op, x):
    value = np.asarray(_numpy(op, x._data), dtype=x._data.dtype)
    build = _BUILD1.get(op) or _BUILD1.setdefault(op, lambda g, a: g.apply(op, a))
    return _record(value, _NAMES[op], (op,), build, [x])


def _binary(op, a, b):
    a = a if type(a) is Tensor else _check_operand(a)
    b = b if type(b) is Tensor else _check_operand(b)
    try:
        value = _numpy(op, _value(a), _value(b))
    except ValueError:
        ops.broadcast_shapes(np.shape(_value(a)), np.shape(_value(b)))  # names both shapes
        raise
    if type(value) is not np.ndarray or value.dtype.kind != "f":
        tensors = [t for t in (a, b) if isinstance(t, Tensor)]
        dtype = np.result_type(*[t._data.dtype for t in tensors])
        value = np.asarray(value, dtype=dtype if dtype.kind == "f" or op != "div" else float32)
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        build = _BUILD2.get(op) or _BUILD2.setdefault(op, lambda g, x, y: g.apply(op, x, y))
        name = "PowBackward1" if op == "pow" else _NAMES[op]
        return _record(value, name, (op,), build, [a, b])
    if isinstance(a, Tensor):   # tensor ∘ number: the number is part of the graph's key
        return _record(value, _NAMES[op], (op, "r", b), lambda g, x: g.apply(op, x, b), [a])
    name = "RsubBackward1" if op == "sub" else _NAMES[op]
    return _record(value, name, (op, "l", a), lambda g, y: g.apply(op, a, y), [b])


def _composite(name, key, build, inputs, value):
    return _record(np.asarray(value, dtype=inputs[0]._data.dtype), name, key, build, inputs)


def reduce_sum(x: Tensor, dim=None, keepdim=False) -> Tensor:
    axes = ops.normalize_axes(dim, x.ndim) if x.ndim else ()
    value = np.sum(x._data, axis=axes, keepdims=keepdim)
    name = "SumBackward0" if dim is None else "SumBackward1"
    return _composite(name, ("sum", axes, keepdim), lambda g, a: a.sum(axes, keepdim), [x], value)


def reduce_mean(x: Tensor, dim=None, keepdim=False) -> Tensor:
    axes = ops.normalize_axes(dim, x.ndim) if x.ndim else ()
    count = math.prod(x._data.shape[a] for a in axes)
    # np.add.reduce and one multiply: np.mean's generality costs more on small tensors
    scale = x._data.dtype.type(1 / count if count else math.nan)   # mean of nothing: nan
    value = np.add.reduce(x._data, axis=axes, keepdims=keepdim) * scale
    name = "MeanBackward0" if dim is None else "MeanBackward1"
    return _composite(name, ("mean", axes, keepdim), lambda g, a: a.mean(axes, keepdim), [x],
                      value)


def _reshape(x: Tensor, shape, name):
    shape = ops.reshape_target(x._data.shape, _shape(shape))
    return _record(x._data.reshape(shape), name, ("reshape", shape),
                   lambda g, a: a.reshape(shape), [x])


def _permute(x: Tensor, perm, name):
    return _record(np.transpose(x._data, perm), name, ("transpose", perm),
                   lambda g, a: a.transpose(perm), [x])


def _cast(x: Tensor, dtype):
    if x.dtype == dtype:
        return x
    if x.requires_grad and _mode.enabled:
        raise NotImplementedError("changing the dtype of a tensor that requires grad is not "
                                  "recorded; build it in the dtype you need")
    return Tensor._make(x._data.astype(dtype))


def matmul(a, b) -> Tensor:
    a, b = as_tensor(a), as_tensor(b)
    if a.ndim not in (1, 2) or b.ndim not in (1, 2):
        raise RuntimeError(f"matmul supports 1-D and 2-D tensors, got shapes {tuple(a.shape)} "
                           f"and {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0]:
        raise RuntimeError(f"mat1 and mat2 shapes cannot be multiplied ({tuple(a.shape)} and "
                           f"{tuple(b.shape)})")
    name = "MmBackward0" if a.ndim == b.ndim == 2 else (
        "DotBackward0" if a.ndim == b.ndim == 1 else "MvBackward0")
    return _record(np.matmul(a._data, b._data), name, ("matmul",), lambda g, x, y: x @ y, [a, b])


# ---- indexing, selection and joins ---------------------------------------------------------
def _scalar_bound(v):
    if isinstance(v, Tensor):
        if v.ndim:
            raise NotImplementedError("clamp with tensor bounds is not supported here; use "
                                      "torch.maximum / torch.minimum")
        return v.item()
    return _check_operand(v)


def _index_array(index) -> np.ndarray:
    value = index._data if isinstance(index, Tensor) else np.asarray(index)
    if value.dtype.kind not in "iub":
        raise IndexError("tensors used as indices must be long, int, byte or bool tensors")
    return value


def _getitem(x: Tensor, index):
    """``x[index]`` recorded: basic indices as a view, index tensors (and boolean masks,
    whose values are known here) as a gather, as PyTorch's IndexBackward0."""
    items = index if isinstance(index, tuple) else (index,)
    parts, key = [], []
    for it in items:
        if isinstance(it, slice) and it.step is not None and _value(it.step) <= 0:
            raise ValueError("step must be greater than zero")
        if isinstance(it, (Tensor, np.ndarray, list)):
            arr = _index_array(it)
            if arr.ndim == 0 and arr.dtype.kind in "iu":
                arr = int(arr)
                parts.append(arr)
                key.append(arr)
                continue
            parts.append(arr)
            key.append(("array", array_digest(arr)))
        else:
            parts.append(it)
            key.append(it if not isinstance(it, slice) else ("slice", it.start, it.stop,
                                                              it.step))
    parts = tuple(parts)
    value = x._data[parts]
    value = np.array(value) if np.ndim(value) else np.asarray(value)
    advanced = any(isinstance(p, np.ndarray) for p in parts)
    name = "IndexBackward0" if advanced else ("SelectBackward0" if all(
        isinstance(p, int) for p in parts) else "SliceBackward0")
    return _record(value, name, ("getitem", tuple(key)), lambda g, a: a[parts], [x])


def where(condition, input, other) -> Tensor:
    """torch.where(condition, input, other): the gradient goes to the branch chosen."""
    cond = np.asarray(_index_array(condition) != 0)
    a, b = _check_operand(input), _check_operand(other)
    tensors = [t for t in (a, b) if isinstance(t, Tensor)]
    if not tensors:
        raise TypeError("where() needs input or other to be a tensor")
    dtype = np.result_type(*[t._data.dtype for t in tensors])
    value = np.where(cond, _value(a), _value(b)).astype(dtype)
    key = ("where", array_digest(cond), *[None if isinstance(v, Tensor) else v for v in (a, b)])

    def build(g, *exprs):          # the tensors' nodes in their places, numbers as they are
        nodes = iter(exprs)
        return g.apply("where", cond, *[next(nodes) if isinstance(v, Tensor) else v
                                        for v in (a, b)])
    return _record(value, "WhereBackward0", key, build, tensors)


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
    if entry.torch and _NAMES.pop(entry.name, None) and \
            getattr(vars(Tensor).get(entry.torch), "__qualname__", "") == entry.torch:
        delattr(Tensor, entry.torch)


ops.on_register(_method, _forget)
