"""symgrad.compiler: expression DAG → symbolic reverse graph → sympy → LLVM.

>>> from symgrad.compiler import Graph
>>> g = Graph()
>>> x, y = g.input("x", shape=(3,)), g.input("y", shape=(3,))
>>> f = g.compile(outputs=[x * y], wrt=[x, y])
>>> value, (dx, dy) = f.vjp([0., 2., 8.], [5., 1., 7.], seed=[1., 1., 1.])
>>> dx, dy
(array([5., 1., 7.]), array([0., 2., 8.]))

Every elementwise operator of the table (``ops.ELEMENTWISE``) is a function here:
``sin``, ``tanh``, ``maximum``, … — and so is one declared later with ``ops.elementwise``.
"""
from . import functions, ops
from .autodiff import Adjoint, LinearMap
from .backend.batch import Batched, vmap
from .backend.jit import wait_optimized
from .distributed import map_blocks
from .errors import GraphError, ShapeError
from .function import CompiledFunction
from .functions import (amax, amin, broadcast_to, clamp, clip, concatenate, cumsum, dot, einsum,
                        expand_dims, flip, log_softmax, logsumexp, matmul, mean, norm, pad, prod,
                        reshape, softmax, squeeze, stack, std, sum, take, take_along_axis,
                        transpose, unsqueeze, var)
from .graph import Expr, Graph, as_dtype
from .loops import fori_loop, scan
from .ops import ELEMENTWISE, STRUCTURED
from .parsing import ParseError, Program, parse

globals().update({name: getattr(functions, name) for name in functions.PUBLIC})

__all__ = ["Graph", "Expr", "GraphError", "ShapeError", "Adjoint", "LinearMap",
           "CompiledFunction", "ELEMENTWISE", "STRUCTURED", "as_dtype", "parse", "ParseError",
           "Program", "vmap", "Batched", "scan", "fori_loop", "map_blocks", "wait_optimized",
           *functions.STRUCTURED_FUNCTIONS, *functions.PUBLIC]


def __getattr__(name):
    # an operator declared after import (ops.elementwise) is a function here too
    if name in functions.PUBLIC:
        return getattr(functions, name)
    raise AttributeError(f"module 'symgrad.compiler' has no attribute {name!r}")
