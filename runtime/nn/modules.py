"""nn modules: parameters, containers, layers and losses, as PyTorch writes them."""
from __future__ import annotations

import math
from collections import OrderedDict, namedtuple

import numpy as np

from .. import tensor as T
from ..creation import empty
from ..tensor import Tensor, _is_device, no_grad
from . import functional as F
from . import init


class Parameter(Tensor):
    """A tensor that is a module's parameter: a leaf that requires grad, sharing the
    memory of the data it was made from (as in PyTorch)."""

    def __init__(self, data=None, requires_grad=True):
        data = T.as_tensor(data if data is not None else np.zeros(0, np.float32))
        super().__init__(data._data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class Module:
    """Base class: parameters, buffers and submodules are found by attribute."""

    def __init__(self, *args, **kwargs):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError("cannot assign to a module before Module.__init__() call: "
                                 "call super().__init__() first")
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        elif value is None and name in ("bias", "weight"):
            self._parameters[name] = None
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for table in (self._parameters, self._modules, self._buffers):
            table.pop(name, None)
        object.__delattr__(self, name)

    def register_buffer(self, name, tensor, persistent=True):
        object.__setattr__(self, name, tensor)
        self._buffers[name] = tensor
        if not persistent:
            self.__dict__.setdefault("_non_persistent", set()).add(name)

    def register_parameter(self, name, param):
        setattr(self, name, param)

    def add_module(self, name, module):
        setattr(self, name, module)

    register_module = add_module

    # ---- walking the tree --------------------------------------------------------------------
    def named_modules(self, memo=None, prefix=""):
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is not None:
                yield from m.named_modules(memo, prefix + ("." if prefix else "") + name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        yield from ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        seen = set()
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mp, m in modules:
            for name, p in m._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (mp + "." if mp else "") + name, p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True):
        modules = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mp, m in modules:
            for name, b in m._buffers.items():
                if b is not None:
                    yield (mp + "." if mp else "") + name, b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- state -------------------------------------------------------------------------------
    def state_dict(self, destination=None, prefix="", keep_vars=False):
        out = OrderedDict() if destination is None else destination
        for name, m in self.named_modules(prefix=prefix.rstrip(".")):
            skip = m.__dict__.get("_non_persistent", set())
            for table in (m._parameters, m._buffers):
                for key, t in table.items():
                    if t is not None and key not in skip:
                        out[(name + "." if name else "") + key] = t if keep_vars else t.detach()
        return out

    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Copy the values in (same shapes), as PyTorch; missing and unexpected keys are
        an error when ``strict``."""
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise RuntimeError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                               f"missing keys {missing}, unexpected keys {unexpected}")
        with no_grad():
            for key, t in own.items():
                if key in state_dict:
                    value = T.as_tensor(state_dict[key])
                    if getattr(t, "_lazy", False):     # a lazy module takes the shape
                        t._data, t._lazy = np.zeros(value._data.shape, t.dtype), False
                    if tuple(value.shape) != tuple(t.shape):
                        raise RuntimeError(
                            f"size mismatch for {key}: copying a param with shape "
                            f"{tuple(value.shape)} from checkpoint, the shape in current "
                            f"model is {tuple(t.shape)}.")
                    t.copy_(value)
        return _IncompatibleKeys(missing, unexpected)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            T.clear_grad(p, set_to_none)

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def train(self, mode=True):
        object.__setattr__(self, "training", mode)
        for m in self.children():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, *args, **kwargs):
        """Devices: the CPU only.  A floating dtype converts floating parameters and
        buffers in place (the same Parameter objects, as PyTorch)."""
        from ..device import check_device
        from ..dtypes import as_dtype
        dtype = kwargs.pop("dtype", None)
        check_device(kwargs.pop("device", None))
        for a in args:
            if isinstance(a, Tensor):
                dtype = a.dtype
            elif _is_device(a):
                check_device(a)
            elif a is not None:
                dtype = a
        if dtype is not None:
            dtype = as_dtype(dtype)
            if dtype.kind != "f":
                raise TypeError(f"nn.Module.to only accepts floating point dtypes, but got "
                                f"desired dtype={dtype}")
            self._convert(dtype)
        return self

    def _convert(self, dtype):
        for t in list(self.parameters()) + list(self.buffers()):
            if t._data.dtype.kind == "f":
                t._data = t._data.astype(dtype)
                if t.grad is not None:
                    t.grad._data = t.grad._data.astype(dtype)

    def double(self):
        self._convert(np.dtype(np.float64))
        return self

    def float(self):
        self._convert(np.dtype(np.float32))
        return self

    def cpu(self):
        return self

    def cuda(self, *args, **kwargs):
        from ..device import check_device
        check_device("cuda")

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"Module [{type(self).__name__}] is missing the required "
                                  "\"forward\" function")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        inner = "".join("\n  (" + n + "): " + repr(m).replace("\n", "\n  ")
                        for n, m in self._modules.items())
        extra = self.extra_repr()
        if not inner:
            return f"{type(self).__name__}({extra})"
        return f"{type(self).__name__}({extra}{inner}\n)"

    def extra_repr(self):
        return ""


def _empty(shape, dtype, device):
    return empty(shape, dtype=dtype or np.float32, device=device)


# ---- containers ------------------------------------------------------------------------------
class _ModuleSequence(Module):
    """Modules kept in order under the names "0", "1", …: indexing, slicing, len, iter."""

    def append(self, module):
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, k):
        mods = list(self._modules.values())
        return self._of(mods[k]) if isinstance(k, slice) else mods[k]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(_ModuleSequence):
    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            for name, m in modules[0].items():
                setattr(self, name, m)
        else:
            self.extend(modules)

    @staticmethod
    def _of(modules):
        return Sequential(*modules)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x


class ModuleList(_ModuleSequence):
    def __init__(self, modules=None):
        super().__init__()
        self.extend(modules or ())

    @staticmethod
    def _of(modules):
        return ModuleList(modules)


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        for name, m in (modules or {}).items():
            setattr(self, name, m)

    def __getitem__(self, key):
        return self._modules[key]

    def __setitem__(self, key, module):
        setattr(self, key, module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()


class ParameterList(Module):
    def __init__(self, values=None):
        super().__init__()
        for v in values or ():
            self.append(v)

    def append(self, value):
        setattr(self, str(len(self._parameters)), value if isinstance(value, Parameter)
                else Parameter(value))
        return self

    def __getitem__(self, k):
        return list(self._parameters.values())[k]

    def __len__(self):
        return len(self._parameters)

    def __iter__(self):
        return iter(self._parameters.values())


# ---- layers --------------------------------------------------------------------------------------
class Linear(Module):
    """y = x Wᵀ + b, initialised as PyTorch does (kaiming_uniform_ with a = √5, then the
    bias from U(−1/√in, 1/√in)), from the same random stream."""

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_empty((out_features, in_features), dtype, device))
        self.bias = Parameter(_empty((out_features,), dtype, device)) \
            if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in, _ = init._calculate_fan_in_and_fan_out(self.weight)
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


class LazyLinear(Linear):
    """A Linear whose ``in_features`` is read from the first input; its parameters are
    made (and drawn from the random stream) at that first call, as in PyTorch."""

    def __init__(self, out_features, bias=True, device=None, dtype=None):
        Module.__init__(self)
        self.in_features, self.out_features = 0, out_features
        self._options = (bias, device, dtype)
        self.weight = _uninitialized()
        self.bias = _uninitialized() if bias else None

    def forward(self, x):
        if self.weight._lazy:
            bias, device, dtype = self._options
            self.in_features = x.shape[-1]
            self.weight._data = _empty((self.out_features, self.in_features), dtype,
                                       device)._data
            if bias:
                self.bias._data = _empty((self.out_features,), dtype, device)._data
            self.weight._lazy = False
            if bias:
                self.bias._lazy = False
            self.reset_parameters()
            self.__class__ = Linear     # PyTorch's cls_to_become: it is a Linear now
        return Linear.forward(self, x)


def _uninitialized():
    """PyTorch's UninitializedParameter: shaped by the first call or by a loaded state."""
    p = Parameter(np.zeros((0,), np.float32))
    p._lazy = True
    return p


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 _weight=None, dtype=None, device=None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.weight = Parameter(_weight if _weight is not None else
                                _empty((num_embeddings, embedding_dim), dtype,
                                                   device))
        if _weight is None:
            init.normal_(self.weight)
            if padding_idx is not None:
                with no_grad():
                    self.weight[padding_idx].zero_()

    def forward(self, input):
        return F.embedding(input, self.weight, self.padding_idx)

    def extra_repr(self):
        return f"{self.num_embeddings}, {self.embedding_dim}"


class Flatten(Module):
    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Unflatten(Module):
    def __init__(self, dim, unflattened_size):
        super().__init__()
        self.dim, self.unflattened_size = dim, tuple(unflattened_size)

    def forward(self, x):
        dim = self.dim % x.ndim
        shape = tuple(x.shape)
        return x.reshape(shape[:dim] + self.unflattened_size + shape[dim + 1:])


class Identity(Module):
    def forward(self, x):
        return x


class Dropout(Module):
    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        self.p, self.inplace = p, inplace

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.inplace)

    def extra_repr(self):
        return f"p={self.p}, inplace={self.inplace}"


def _activation(name, fn, *params):
    """A Module class around a functional activation; ``params`` are its (name, default)
    keyword parameters, also accepted positionally in that order."""
    defaults = dict(params)

    def __init__(self, *args, **kwargs):
        Module.__init__(self)
        values = {**defaults, **dict(zip(defaults, args)), **kwargs}
        for key in defaults:
            object.__setattr__(self, key, values[key])

    def forward(self, x):
        return fn(x, **{k: getattr(self, k) for k in defaults})

    def extra_repr(self):
        return ", ".join(f"{k}={getattr(self, k)}" for k in defaults if k != "inplace")
    return type(name, (Module,), {"__init__": __init__, "forward": forward,
                                  "extra_repr": extra_repr})


ReLU = _activation("ReLU", F.relu, ("inplace", False))
ReLU6 = _activation("ReLU6", F.relu6, ("inplace", False))
LeakyReLU = _activation("LeakyReLU", F.leaky_relu, ("negative_slope", 0.01),
                        ("inplace", False))
ELU = _activation("ELU", F.elu, ("alpha", 1.0), ("inplace", False))
GELU = _activation("GELU", F.gelu, ("approximate", "none"))
SiLU = _activation("SiLU", F.silu, ("inplace", False))
Softplus = _activation("Softplus", F.softplus, ("beta", 1.0), ("threshold", 20.0))
Hardtanh = _activation("Hardtanh", F.hardtanh, ("min_val", -1.0), ("max_val", 1.0),
                       ("inplace", False))
Tanh = _activation("Tanh", F.tanh)
Sigmoid = _activation("Sigmoid", F.sigmoid)
Softmax = _activation("Softmax", F.softmax, ("dim", None))
LogSoftmax = _activation("LogSoftmax", F.log_softmax, ("dim", None))


# ---- losses ----------------------------------------------------------------------------------
def _loss(name, fn, *params):
    """A loss Module around a functional loss: ``reduction=`` plus its own parameters."""
    defaults = dict(params)
    names = [k for k, _ in params]

    def __init__(self, *args, size_average=None, reduce=None, reduction="mean", **kwargs):
        Module.__init__(self)
        if reduction not in ("mean", "sum", "none", "batchmean"):
            raise ValueError(f"{reduction} is not a valid value for reduction")
        values = dict(zip(names, args))
        values.update(kwargs)
        unknown = set(values) - set(names)
        if unknown:
            raise TypeError(f"{name}() got unexpected arguments {sorted(unknown)}")
        object.__setattr__(self, "reduction", reduction)
        for key in names:
            value = values.get(key, defaults[key])
            if isinstance(value, Tensor):
                self.register_buffer(key, value)
            else:
                object.__setattr__(self, key, value)

    def forward(self, input, target):
        return fn(input, target, reduction=self.reduction,
                  **{k: getattr(self, k) for k in names})
    return type(name, (Module,), {"__init__": __init__, "forward": forward})


MSELoss = _loss("MSELoss", F.mse_loss)
L1Loss = _loss("L1Loss", F.l1_loss)
SmoothL1Loss = _loss("SmoothL1Loss", F.smooth_l1_loss, ("beta", 1.0))
HuberLoss = _loss("HuberLoss", F.huber_loss, ("delta", 1.0))
NLLLoss = _loss("NLLLoss", F.nll_loss, ("weight", None), ("ignore_index", -100))
CrossEntropyLoss = _loss("CrossEntropyLoss", F.cross_entropy, ("weight", None),
                         ("ignore_index", -100), ("label_smoothing", 0.0))
BCELoss = _loss("BCELoss", F.binary_cross_entropy, ("weight", None))
BCEWithLogitsLoss = _loss("BCEWithLogitsLoss", F.binary_cross_entropy_with_logits,
                          ("weight", None), ("pos_weight", None))
KLDivLoss = _loss("KLDivLoss", F.kl_div, ("log_target", False))
