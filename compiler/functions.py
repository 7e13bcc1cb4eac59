"""Functions on graph expressions: ``sin(x)``, ``maximum(a, b)``, ``sum(x, axes)``, …

Each elementwise one is made from its operator-table entry (``ops.on_register``), so
declaring an operator there adds its function here — at import, or later.
"""
from __future__ import annotations

from . import ops
from .graph import Expr

PUBLIC: list = []            # names of the elementwise functions, in table order


def _elementwise(entry):
    name = entry.name

    def fn(*args):
        graph = next((a.graph for a in args if isinstance(a, Expr)), None)
        if graph is None:
            raise TypeError(f"{name}() needs at least one graph expression argument")
        return graph.apply(name, *args)
    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = f"Elementwise {name}: {entry.formula} (a, b: operands)."
    return fn


def _register(entry):
    if entry.public and entry.name not in ("add", "sub", "mul", "div", "neg"):
        globals()[entry.name] = _elementwise(entry)
        if entry.name not in PUBLIC:
            PUBLIC.append(entry.name)


def _forget(entry):
    if entry.name in PUBLIC:
        PUBLIC.remove(entry.name)
        del globals()[entry.name]


ops.on_register(_register, _forget)


def sum(x: Expr, axes=None, keepdims=False) -> Expr:
    return x.sum(axes, keepdims)


def mean(x: Expr, axes=None, keepdims=False) -> Expr:
    return x.mean(axes, keepdims)


def reshape(x: Expr, shape) -> Expr:
    return x.reshape(shape)


def transpose(x: Expr, perm=None) -> Expr:
    return x.transpose(perm)


def clamp(x: Expr, min=None, max=None) -> Expr:
    return x.clamp(min, max)


clip = clamp
STRUCTURED_FUNCTIONS = ["sum", "mean", "reshape", "transpose", "clamp", "clip"]
