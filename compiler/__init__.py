"""symgrad.compiler: expression DAG → symbolic reverse graph → sympy → LLVM.

>>> from symgrad.compiler import Graph
>>> g = Graph()
>>> x, y = g.input("x", shape=(3,)), g.input("y", shape=(3,))
>>> f = g.compile(outputs=[x * y], wrt=[x, y])
>>> value, (dx, dy) = f.vjp([0., 2., 8.], [5., 1., 7.], seed=[1., 1., 1.])
>>> dx, dy
(array([5., 1., 7.]), array([0., 2., 8.]))
"""
from .graph import Expr, Graph, GraphError, as_dtype
from .ops import ELEMENTWISE, STRUCTURED, ShapeError
from .autodiff import Adjoint, LinearMap
from . import functions
from .functions import (abs, cos, exp, log, maximum, mean, minimum, pow, relu, reshape,
                        sigmoid, sign, sin, sqrt, sum, tan, tanh, transpose)

__all__ = ["Graph", "Expr", "GraphError", "ShapeError", "Adjoint", "LinearMap",
           "ELEMENTWISE", "STRUCTURED", "abs", "cos", "exp", "log", "maximum", "mean",
           "minimum", "pow", "relu", "reshape", "sigmoid", "sign", "sin", "sqrt", "sum",
           "tan", "tanh", "transpose", "as_dtype"]
