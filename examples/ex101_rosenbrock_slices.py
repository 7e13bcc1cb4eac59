"""Rosenbrock in n = 10,000 dimensions, written with slices as in numpy:
f(x) = Σ 100·(x[1:] − x[:−1]²)² + (1 − x[:−1])².  The slices are views (offsets into x's
buffer), so value and gradient are one fused loop."""
import time

import numpy as np

from symgrad.compiler import Graph

n = 10_000
g = Graph()
x = g.input("x", (n,))
f = (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()
start = time.perf_counter()
rosen = g.compile(f, wrt=[x])
print(f"compiled in {time.perf_counter() - start:.2f} s")

x0 = np.cos(np.arange(n) * 0.1)
value, (grad,) = rosen.vjp(x0)
# the closed form of the gradient, written out by hand
a, b = x0[:-1], x0[1:]
expect = np.zeros(n)
expect[:-1] += -400 * a * (b - a ** 2) - 2 * (1 - a)
expect[1:] += 200 * (b - a ** 2)
print(f"f(x0) = {value:.10g}  (numpy: {np.sum(100 * (b - a**2)**2 + (1 - a)**2):.10g})")
print("gradient agrees with the closed form:", np.allclose(grad, expect, rtol=1e-13, atol=1e-10))
print("at the minimum x = 1:", rosen.vjp(np.ones(n))[0], np.abs(rosen.vjp(np.ones(n))[1][0]).max())
