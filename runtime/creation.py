"""Making tensors: PyTorch's factories, with its default dtypes and its random streams."""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import random as _random
from .device import check_device
from .dtypes import as_dtype, float32, float64, int64
from .tensor import Tensor, _shape, as_tensor, tensor


def _made(data, dtype, device, requires_grad) -> Tensor:
    check_device(device)
    # np.asarray keeps 0-d arrays 0-d (np.ascontiguousarray would make them 1-d)
    return Tensor(np.asarray(data, dtype=as_dtype(dtype), order="C"), requires_grad=requires_grad)


def _size(size, kwargs):
    if "size" in kwargs:
        if size:
            raise TypeError("give the size once: positionally or as size=")
        size = (kwargs.pop("size"),)
    return _shape(size)


def _options(kwargs, default=float32):
    """dtype, device, requires_grad from a factory's keywords (PyTorch's TensorOptions)."""
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    requires_grad = kwargs.pop("requires_grad", False)
    generator = kwargs.pop("generator", None)
    for k in ("layout", "pin_memory", "memory_format", "out", "names"):
        if kwargs.pop(k, None) not in (None, False):
            raise NotImplementedError(f"the {k}= argument of a factory is not supported")
    if kwargs:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
    return (default if dtype is None else dtype), device, requires_grad, generator


def _filled(fill, size, kwargs, default=float32):
    shape = _size(size, kwargs)
    dtype, device, requires_grad, _ = _options(kwargs, default)
    return _made(np.full(shape, fill), dtype, device, requires_grad)


def zeros(*size, **kwargs): return _filled(0, size, kwargs)
def ones(*size, **kwargs): return _filled(1, size, kwargs)


def empty(*size, **kwargs):
    """Zeros: PyTorch leaves the memory uninitialised; here it is always 0."""
    return _filled(0, size, kwargs)


def full(size, fill_value, **kwargs):
    if "dtype" not in kwargs:     # PyTorch infers the dtype from the fill value
        kwargs["dtype"] = (np.bool_ if isinstance(fill_value, bool) else
                           int64 if isinstance(fill_value, numbers.Integral) else float32)
    return _filled(fill_value, (size,), kwargs)


def _like(t, fill, kwargs):
    t = as_tensor(t)
    kwargs.setdefault("dtype", t.dtype)
    return _filled(fill, (tuple(t.shape),), kwargs)


def zeros_like(t, **kwargs): return _like(t, 0, kwargs)
def ones_like(t, **kwargs): return _like(t, 1, kwargs)
def empty_like(t, **kwargs): return _like(t, 0, kwargs)
def full_like(t, fill_value, **kwargs): return _like(t, fill_value, kwargs)


def eye(n, m=None, **kwargs):
    dtype, device, requires_grad, _ = _options(kwargs)
    return _made(np.eye(n, n if m is None else m), dtype, device, requires_grad)


def arange(start, end=None, step=1, **kwargs):
    if end is None:
        start, end = 0, start
    start, end, step = (v.item() if isinstance(v, Tensor) else v for v in (start, end, step))
    floating = any(isinstance(v, float) for v in (start, end, step))
    dtype, device, requires_grad, _ = _options(kwargs, float32 if floating else int64)
    if as_dtype(dtype).kind == "f":
        # PyTorch: size = ceil((end − start) / step); value k = start + k·step in float64
        n = max(0, math.ceil((end - start) / step))
        data = start + np.arange(n, dtype=np.float64) * step
    else:
        data = np.arange(start, end, step)
    return _made(data, dtype, device, requires_grad)


def linspace(start, end, steps, **kwargs):
    """``steps`` points from ``start`` to ``end``, as PyTorch's scalar kernel computes them:
    from the start for the first half, from the end for the second.  (Its vectorised
    kernel steps from the start of each block, so values can differ in the last bit.)"""
    dtype, device, requires_grad, _ = _options(kwargs)
    start, end = (v.item() if isinstance(v, Tensor) else v for v in (start, end))
    steps = int(steps)
    if steps < 0:
        raise RuntimeError("linspace: number of steps must be non-negative")
    dtype = as_dtype(dtype)
    t = np.float64 if dtype == float64 else np.float32
    if steps == 1:
        return _made(np.array([start]), dtype, device, requires_grad)
    step = t((end - start) / (steps - 1)) if steps else t(0)
    k = np.arange(steps)
    half = steps // 2
    data = np.where(k < half, t(start) + step * k.astype(t),
                    t(end) - step * (steps - k - 1).astype(t))
    return _made(data, dtype, device, requires_grad)


def logspace(start, end, steps, base=10.0, **kwargs):
    dtype = kwargs.get("dtype") or float32
    return _made(np.power(base, linspace(start, end, steps, dtype=float64)._data),
                 dtype, kwargs.get("device"), kwargs.get("requires_grad", False))


# ---- random ----------------------------------------------------------------------------------
def rand(*size, **kwargs):
    shape = _size(size, kwargs)
    dtype, device, requires_grad, gen = _options(kwargs)
    data = _random.generator(gen).uniform(math.prod(shape), as_dtype(dtype))
    return _made(data.reshape(shape), dtype, device, requires_grad)


def randn(*size, **kwargs):
    shape = _size(size, kwargs)
    dtype, device, requires_grad, gen = _options(kwargs)
    data = _random.generator(gen).normal(math.prod(shape), as_dtype(dtype))
    return _made(data.reshape(shape), dtype, device, requires_grad)


def rand_like(t, **kwargs):
    kwargs.setdefault("dtype", as_tensor(t).dtype)
    return rand(tuple(t.shape), **kwargs)


def randn_like(t, **kwargs):
    kwargs.setdefault("dtype", as_tensor(t).dtype)
    return randn(tuple(t.shape), **kwargs)


def randint(low, high=None, size=None, **kwargs):
    if size is None:                       # randint(high, size)
        low, high, size = 0, low, high
    if size is None:
        raise TypeError("randint() needs a size: randint(low, high, (n,))")
    shape = _shape((size,))
    dtype, device, requires_grad, gen = _options(kwargs, int64)
    data = _random.generator(gen).integers(int(low), int(high), math.prod(shape))
    return _made(data.reshape(shape), dtype, device, requires_grad)


def randperm(n, **kwargs):
    dtype, device, requires_grad, gen = _options(kwargs, int64)
    return _made(_random.generator(gen).permutation(int(n)), dtype, device, requires_grad)


def normal(mean=0.0, std=1.0, size=None, **kwargs):
    """``torch.normal``: tensors of means and/or standard deviations (broadcast), or two
    numbers and a ``size``."""
    gen = _random.generator(kwargs.pop("generator", None))
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        m, s = np.asarray(mean._data if isinstance(mean, Tensor) else mean), \
            np.asarray(std._data if isinstance(std, Tensor) else std)
        shape = np.broadcast_shapes(m.shape, s.shape)
        dtype = (mean if isinstance(mean, Tensor) else std).dtype
        z = gen.normal(math.prod(shape), dtype).reshape(shape)
        return Tensor(np.asarray(z * s + m, dtype=dtype))
    if size is None:
        raise TypeError("normal(mean, std) with numbers needs a size=")
    shape = _shape((size,))
    dtype, device, requires_grad, _ = _options(kwargs)
    data = gen.normal(math.prod(shape), as_dtype(dtype), mean, std)
    return _made(data.reshape(shape), dtype, device, requires_grad)


def bernoulli(p, generator=None):
    """Ones with probability ``p``.  (The stream is not PyTorch's: its CPU kernel draws
    through MKL.)"""
    p = as_tensor(p)
    u = _random.generator(generator).uniform(p._data.size, np.float64).reshape(p.shape)
    return Tensor((u < p._data).astype(p.dtype))


# ---- constructors from data --------------------------------------------------------------------
def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory (changes show on both sides), as in PyTorch."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    if array.dtype.kind not in "fiub":
        raise TypeError(f"can't convert np.ndarray of type {array.dtype}")
    return Tensor(array if array.dtype.kind != "u" or array.dtype == np.uint8
                  else array.astype(int64))


def legacy_tensor(args, dtype=float32) -> np.ndarray:
    """``torch.Tensor(...)``/``torch.FloatTensor(...)``: data (a list, array or tensor) or
    sizes (``torch.Tensor(2, 3)``: zeros, where PyTorch leaves memory uninitialised)."""
    if not args:
        return np.zeros(0, dtype)
    if all(isinstance(a, numbers.Integral) and not isinstance(a, bool) for a in args) or (
            len(args) == 1 and type(args[0]).__name__ in ("Size",)):
        return np.zeros(_shape(args), dtype)
    if len(args) != 1:
        raise TypeError("torch.Tensor() takes data (a list or array) or sizes (ints)")
    return tensor(args[0], dtype=dtype)._data


def _typed(name, dtype):
    def make(*args):
        return Tensor(legacy_tensor(args, dtype))
    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"torch.{name}(data or sizes): a {dtype} tensor."
    return make


FloatTensor = _typed("FloatTensor", float32)
DoubleTensor = _typed("DoubleTensor", float64)
LongTensor = _typed("LongTensor", int64)
IntTensor = _typed("IntTensor", np.dtype(np.int32))
BoolTensor = _typed("BoolTensor", np.dtype(np.bool_))


def Variable(data, requires_grad=False, volatile=False):
    """PyTorch's old wrapper, kept as PyTorch keeps it: the tensor itself."""
    t = as_tensor(data)
    if requires_grad:
        t.requires_grad_(True)
    return t
