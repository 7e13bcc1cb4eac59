"""W11 — scalar Rosenbrock, n = 100 … 3,200 scalar inputs: compile + first gradient per node
of the user's graph, cold, against n = 100 (#14: within 1.5× at n = 3,200; it was 15.3 s
at n = 800, 12.9 s of it inside LLVM on one straight-line function).

f = Σ_{i<n-1} c·(x_{i+1} − x_i²)² + (1 − x_i)², its value and gradient.  CasADi SX builds and
calls the same function in the same run (its per-node cost, for scale)."""
import sys
import time

import numpy as np

from common import agree, cold, peer, report


def rosenbrock(g_inputs, n, c):
    f = 0.0
    for i in range(n - 1):
        f = f + c * (g_inputs[i + 1] - g_inputs[i] * g_inputs[i]) ** 2 + (1.0 - g_inputs[i]) ** 2
    return f


def symgrad_first(n, c):
    """Seconds to build, compile and call once; the graph's node count; the results."""
    from symgrad.compiler import Graph
    cold()
    start = time.perf_counter()
    g = Graph()
    xs = [g.input(f"x{i}") for i in range(n)]
    fn = g.compile([rosenbrock(xs, n, c)], wrt=xs)
    value, grads = fn.vjp(*np.linspace(-1.0, 1.5, n))
    return time.perf_counter() - start, len(g), [value, np.array(grads)]


def main(sizes=(100, 200, 400, 800, 1600, 3200)):
    rows, per_node = [], {}
    ca = peer("casadi")
    for n in sizes:
        # three cold compiles (a constant each: nothing comes from a cache), the best
        runs = [symgrad_first(n, 100.0 + 1e-9 * r + 1e-12 * n) for r in range(3)]
        seconds, nodes, ref = min(runs, key=lambda run: run[0])
        per_node[n] = seconds / nodes
        rows.append(dict(case=f"n={n} per node", system="symgrad", seconds=per_node[n]))
        if ca:
            best = float("inf")
            for _ in range(3):
                cold()
                start = time.perf_counter()
                X = ca.SX.sym("x", n)
                f = rosenbrock([X[i] for i in range(n)], n, 100.0)
                cf = ca.Function("f", [X], [f, ca.gradient(f, X)])
                out = cf(np.linspace(-1.0, 1.5, n))
                best = min(best, time.perf_counter() - start)
            agree("casadi", ref, [float(out[0]), np.asarray(out[1]).ravel()])
            rows.append(dict(case=f"n={n} per node", system="casadi SX", seconds=best / nodes))
    first, last = min(sizes), max(sizes)
    report("W11 Rosenbrock compile scaling", rows,
           notes=f"per node of symgrad's graph; n={last} / n={first}: "
                 f"{per_node[last] / per_node[first]:.2f}× (target ≤ 1.5×)")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (100, 200, 400, 800, 1600, 3200))
