"""Devices: the CPU is the only one.  Code written for CUDA runs unchanged when it asks
(``torch.cuda.is_available()`` is False); naming another device is a clear error."""
from __future__ import annotations

import types


class device:
    """``torch.device("cpu")``: accepted; any other device raises when it is used."""

    def __init__(self, type_or_name="cpu", index=None):
        if isinstance(type_or_name, device):
            type_or_name, index = type_or_name.type, type_or_name.index
        name = str(type_or_name)
        self.type, _, idx = name.partition(":")
        self.index = int(idx) if idx else index

    def __repr__(self):
        return f"device(type='{self.type}'" + (f", index={self.index})" if self.index
                                               is not None else ")")

    def __str__(self):
        return self.type + (f":{self.index}" if self.index is not None else "")

    def __eq__(self, other):
        return str(self) == str(device(other)) if isinstance(other, (str, device)) else False

    def __hash__(self):
        return hash(str(self))

    def __enter__(self):
        check_device(self)
        return self

    def __exit__(self, *exc):
        return False


CPU = device("cpu")


def check_device(d):
    """Accept the CPU; refuse any other device with what to do instead."""
    if d is None:
        return CPU
    if isinstance(d, int):
        d = f"cuda:{d}"
    d = device(d)
    if d.type != "cpu":
        raise RuntimeError(f"device '{d}' is not available: symgrad.runtime runs on the CPU "
                           "(its backward is compiled to native CPU code). Use "
                           "device='cpu', or guard with torch.cuda.is_available()")
    return d


def set_default_device(d):
    check_device(d)


def get_default_device():
    return CPU


def _false(*args, **kwargs):
    return False


def _nothing(*args, **kwargs):
    return None


def _no_cuda(*args, **kwargs):
    check_device("cuda")


# torch.cuda and torch.backends.mps as far as device-agnostic programs ask them
cuda = types.SimpleNamespace(is_available=_false, device_count=lambda: 0,
                             manual_seed=_nothing, manual_seed_all=_nothing,
                             synchronize=_nothing, empty_cache=_nothing,
                             current_device=_no_cuda, get_device_name=_no_cuda)
accelerator = types.SimpleNamespace(is_available=_false, current_accelerator=_nothing,
                                    device_count=lambda: 0)
backends = types.SimpleNamespace(
    mps=types.SimpleNamespace(is_available=_false, is_built=_false),
    cudnn=types.SimpleNamespace(deterministic=False, benchmark=False, enabled=False))
