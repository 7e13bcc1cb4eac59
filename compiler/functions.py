"""Functions on graph expressions: ``sin(x)``, ``maximum(a, b)``, ``sum(x, axes)``, …

Each elementwise one is generated from the operator table, so adding an operator
there adds its function here.
"""
from __future__ import annotations

from .graph import Expr
from .ops import ELEMENTWISE


def _elementwise(name):
    def fn(*args):
        graph = next((a.graph for a in args if isinstance(a, Expr)), None)
        if graph is None:
            raise TypeError(f"{name}() needs at least one graph expression argument")
        return graph.apply(name, *args)
    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = f"Elementwise {name}: {ELEMENTWISE[name].formula} (a, b: operands)."
    return fn


_builtin_abs, _builtin_sum, _builtin_pow = abs, sum, pow
abs = _elementwise("abs")
cos, exp, log, sin, sqrt, tan, tanh = map(_elementwise, ("cos", "exp", "log", "sin", "sqrt",
                                                         "tan", "tanh"))
sigmoid, relu, sign = map(_elementwise, ("sigmoid", "relu", "sign"))
maximum, minimum, pow = map(_elementwise, ("maximum", "minimum", "pow"))


def sum(x: Expr, axes=None, keepdims=False) -> Expr:
    return x.sum(axes, keepdims)


def mean(x: Expr, axes=None, keepdims=False) -> Expr:
    return x.mean(axes, keepdims)


def reshape(x: Expr, shape) -> Expr:
    return x.reshape(shape)


def transpose(x: Expr, perm=None) -> Expr:
    return x.transpose(perm)
