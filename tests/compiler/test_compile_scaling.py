"""Compile time grows linearly with the graph (#14): functions of bounded size, and the
time per node of a large scalar graph no worse than a small one's (a ratio of two sizes
measured in one run, with a generous bound, so a noisy machine does not decide it)."""
import re
import time

import numpy as np

from symgrad.compiler import Graph
from symgrad.compiler.schedule import MAX_SCALAR


def _rosenbrock(n, scale):
    g = Graph()
    xs = [g.input(f"x{i}") for i in range(n)]
    f = 0.0
    for i in range(n - 1):
        f = f + scale * (xs[i + 1] - xs[i] * xs[i]) ** 2 + (1.0 - xs[i]) ** 2
    return g, f, xs


def test_straight_line_scalar_code_is_split_into_bounded_functions():
    g, f, xs = _rosenbrock(600, 100.0)
    fn = g.compile([f], wrt=xs)
    ir = fn.source.build("vjp").llvm_ir
    steps = re.findall(r'\ndefine [^\n]*\.step\d+"[^\n]*\n\{\n(.*?)\n\}', ir, re.S)
    sizes = [len(body.splitlines()) for body in steps]
    assert len(sizes) > 5
    # a member is a handful of instructions (loads, the operation, a store when it crosses)
    assert max(sizes) < 12 * MAX_SCALAR
    x0 = np.linspace(-1.0, 1.5, 600)
    value, grads = fn.vjp(*x0, seed=1.0)
    np.testing.assert_allclose(
        value, np.sum(100.0 * (x0[1:] - x0[:-1] ** 2) ** 2 + (1.0 - x0[:-1]) ** 2), rtol=1e-13)
    dx = np.zeros(600)
    dx[:-1] += -400.0 * x0[:-1] * (x0[1:] - x0[:-1] ** 2) - 2.0 * (1.0 - x0[:-1])
    dx[1:] += 200.0 * (x0[1:] - x0[:-1] ** 2)
    np.testing.assert_allclose(grads, dx, rtol=1e-12, atol=1e-12)


def test_compile_time_per_node_does_not_grow_with_the_graph():
    def per_node(n):
        # a constant no other test uses: the compile is cold
        g, f, xs = _rosenbrock(n, 100.0 + 1e-9 * n + time.time() % 1e-3)
        start = time.perf_counter()
        g.compile([f], wrt=xs)
        return (time.perf_counter() - start) / len(g)
    small, large = per_node(100), per_node(800)
    assert large < 3.0 * small, (small, large)
