"""A Lennard-Jones energy over all particle pairs, written with index arrays:
d = X[iu] − X[ju] for the pairs (iu, ju) = triu_indices(N, 1).  The index arrays are
constants passed to the code at each call: the program is the same for any number of pairs,
so compile time does not grow with them."""
import time

import numpy as np

from symgrad.compiler import Graph


def lennard_jones(n):
    g = Graph()
    X = g.input("X", (n, 3))
    iu, ju = np.triu_indices(n, 1)
    d = X[iu] - X[ju]
    r2 = (d * d).sum(axis=1)
    inv6 = r2 ** -3
    return g.compile((4 * (inv6 * inv6 - inv6)).sum(), wrt=[X])


def reference(X):
    iu, ju = np.triu_indices(len(X), 1)
    d = X[iu] - X[ju]
    r2 = (d * d).sum(1)
    energy = np.sum(4 * (r2 ** -6 - r2 ** -3))
    dE_dr2 = 4 * (-6 * r2 ** -7 + 3 * r2 ** -4)
    force = 2 * dE_dr2[:, None] * d
    grad = np.zeros_like(X)
    np.add.at(grad, iu, force)
    np.add.at(grad, ju, -force)
    return energy, grad


def positions(n, seed=1):
    """n particles near the points of a cubic grid of spacing 1.2."""
    grid = np.stack(np.meshgrid(*[np.arange(10.0)] * 3), -1).reshape(-1, 3)[:n]
    return grid * 1.2 + np.random.default_rng(seed).normal(scale=0.05, size=(n, 3))


def main():
    for n in (100, 1000):
        start = time.perf_counter()
        f = lennard_jones(n)
        compiled = time.perf_counter() - start
        X = positions(n)
        value, (grad,) = f.vjp(X)
        energy, expect = reference(X)
        print(f"N = {n:4}: {n * (n - 1) // 2:6} pairs, compiled in {compiled:.2f} s, "
              f"E = {value:.10g}, agrees: {np.isclose(value, energy, rtol=1e-12)} "
              f"{np.allclose(grad, expect, rtol=1e-9, atol=1e-12)}")


if __name__ == "__main__":
    main()
