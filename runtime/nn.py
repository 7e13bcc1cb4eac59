"""nn: modules, parameters and losses, as PyTorch writes them."""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from . import tensor as T
from .tensor import Tensor


class Parameter(Tensor):
    """A tensor that is a module's parameter: a leaf that requires grad."""

    def __init__(self, data=None, requires_grad=True):
        data = T.as_tensor(data if data is not None else np.zeros(0, np.float32))
        super().__init__(np.array(data._data), requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


class Module:
    """Base class: parameters and submodules are found by attribute."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("call super().__init__() before assigning attributes")
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def named_parameters(self, prefix=""):
        for name, p in self._parameters.items():
            yield prefix + name, p
        for name, m in self._modules.items():
            yield from m.named_parameters(prefix + name + ".")

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            _zero(p, set_to_none)

    def train(self, mode=True):
        object.__setattr__(self, "training", mode)
        for m in self._modules.values():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        inner = "".join(f"\n  ({n}): {m!r}" for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{inner}{chr(10) if inner else ''})"

    def extra_repr(self):
        return ""


def _zero(p, set_to_none):
    if p.grad is None:
        return
    if set_to_none:
        p.grad = None
    else:
        p.grad._data[...] = 0


class Linear(Module):
    """y = x Wᵀ + b, initialised as PyTorch does: U(−1/√in, 1/√in)."""

    def __init__(self, in_features, out_features, bias=True, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features) if in_features else 0.0
        self.weight = Parameter(T.uniform_(T.zeros(out_features, in_features, dtype=dtype),
                                           -bound, bound))
        self.bias = Parameter(T.uniform_(T.zeros(out_features, dtype=dtype), -bound, bound)) \
            if bias else None

    def forward(self, x):
        y = T.as_tensor(x) @ self.weight.T
        return y + self.bias if self.bias is not None else y

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class Sequential(Module):
    def __init__(self, *modules):
        super().__init__()
        for k, m in enumerate(modules):
            setattr(self, str(k), m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, k):
        return list(self._modules.values())[k]


class Sigmoid(Module):
    def forward(self, x): return x.sigmoid()


class ReLU(Module):
    def forward(self, x): return x.relu()


class Tanh(Module):
    def forward(self, x): return x.tanh()


class MSELoss(Module):
    """mean((input − target)²), or the sum with reduction="sum"."""

    def __init__(self, reduction="mean"):
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.reduction = reduction

    def forward(self, input, target):
        input, target = T.as_tensor(input), T.as_tensor(target)
        if tuple(input.shape) != tuple(target.shape):
            raise ValueError(f"MSELoss: input shape {tuple(input.shape)} and target shape "
                             f"{tuple(target.shape)} differ; they must match")
        diff = input - target
        se = diff * diff
        if self.reduction == "none":
            return se
        return se.sum() if self.reduction == "sum" else se.mean()
