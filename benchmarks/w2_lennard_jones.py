"""W2 — Lennard-Jones energy of N particles as a scalar graph: value + gradient.

E = Σ_{i<j} 4 (r⁻¹² − r⁻⁶).  Build + first call, then steady evaluation."""
import sys
import time

import numpy as np

from common import agree, cold, median_time, peer, report


def positions(n):
    rng = np.random.default_rng(n)
    grid = np.array([(i, j, k) for i in range(4) for j in range(4) for k in range(4)], float)
    return (grid[:n] * 1.5 + rng.uniform(-0.1, 0.1, (n, 3))).ravel()


def build_symgrad(n, scalar_inputs=False):
    """The energy over one input vector q (as the peers take it), read element by
    element; or over 3N scalar inputs."""
    from symgrad.compiler import Graph
    g = Graph()
    if scalar_inputs:
        xs = wrt = [g.input(f"q{k}") for k in range(3 * n)]
    else:
        q = g.input("q", (3 * n,))
        xs, wrt = [q[k] for k in range(3 * n)], [q]
    energy = None
    for i in range(n):
        for j in range(i + 1, n):
            d = [xs[3 * i + c] - xs[3 * j + c] for c in range(3)]
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            inv6 = 1.0 / (r2 * r2 * r2)
            term = 4.0 * (inv6 * inv6 - inv6)
            energy = term if energy is None else energy + term
    return g.compile([energy], wrt)


def main(sizes=(10, 30, 60), symengine_max=30):
    rows = []
    for n in sizes:
        case = f"N={n}"
        q = positions(n)
        cold()
        start = time.perf_counter()
        f = build_symgrad(n)
        value, (grad,) = f.vjp(q)
        build = time.perf_counter() - start
        ref = [value, grad]
        rows.append(dict(case=case + " build+1st", system="symgrad", seconds=build))
        rows.append(dict(case=case + " eval", system="symgrad first tier",
                         seconds=median_time(lambda: f.vjp(q), settled=False)))
        # then the optimised code, swapped in when the background compile is done
        start = time.perf_counter()
        f.wait_optimized()
        print(f"  {case}: optimised code ready {time.perf_counter() - start:.2f} s after "
              "the first-tier timing")
        rows.append(dict(case=case + " eval", system="symgrad",
                         seconds=median_time(lambda: f.vjp(q))))
        # the same energy over 3N scalar inputs, called with Python floats
        cold()
        start = time.perf_counter()
        fs = build_symgrad(n, scalar_inputs=True)
        floats = q.tolist()
        value, grads = fs.vjp(*floats)
        rows.append(dict(case=case + " build+1st", system="symgrad, 3N scalar inputs",
                         seconds=time.perf_counter() - start))
        agree("symgrad, 3N scalar inputs", ref, [value, np.array(grads)])
        fs.wait_optimized()
        rows.append(dict(case=case + " eval", system="symgrad, 3N scalar inputs",
                         seconds=median_time(lambda: fs.vjp(*floats))))

        ca = peer("casadi")
        if ca:
            cold()
            start = time.perf_counter()
            Q = ca.SX.sym("q", 3 * n)
            E = 0
            for i in range(n):
                for j in range(i + 1, n):
                    d = Q[3 * i:3 * i + 3] - Q[3 * j:3 * j + 3]
                    inv6 = 1 / (ca.dot(d, d) ** 3)
                    E += 4 * (inv6 * inv6 - inv6)
            cf = ca.Function("lj", [Q], [E, ca.gradient(E, Q)])
            out = cf(q)
            build = time.perf_counter() - start
            agree("casadi", ref, [float(out[0]), np.asarray(out[1]).ravel()])
            rows.append(dict(case=case + " build+1st", system="casadi SX", seconds=build))
            rows.append(dict(case=case + " eval", system="casadi SX",
                             seconds=median_time(lambda: cf(q))))

        jax = peer("jax")
        if jax:
            jax.config.update("jax_enable_x64", True)
            import jax.numpy as jnp
            iu = np.triu_indices(n, 1)

            def energy(q):
                p = q.reshape(n, 3)
                d = p[:, None, :] - p[None, :, :]
                r2 = jnp.sum(d * d, -1)[iu]
                inv6 = 1 / r2 ** 3
                return jnp.sum(4 * (inv6 * inv6 - inv6))
            cold()
            start = time.perf_counter()
            vg = jax.jit(jax.value_and_grad(energy))
            v, gq = vg(jnp.asarray(q))
            build = time.perf_counter() - start
            agree("jax", ref, [float(v), np.asarray(gq)])
            rows.append(dict(case=case + " build+1st", system="jax.jit", seconds=build))
            rows.append(dict(case=case + " eval", system="jax.jit", seconds=median_time(
                lambda: [np.asarray(a) for a in vg(q)])))

        se = peer("symengine") if n <= symengine_max else None
        if se:
            cold()
            start = time.perf_counter()
            Q = se.symbols(f"q0:{3 * n}")
            E = 0
            for i in range(n):
                for j in range(i + 1, n):
                    r2 = sum((Q[3 * i + c] - Q[3 * j + c]) ** 2 for c in range(3))
                    inv6 = 1 / r2 ** 3
                    E += 4 * (inv6 * inv6 - inv6)
            lam = se.Lambdify(Q, [E] + [E.diff(v) for v in Q], backend="llvm", cse=True)
            out = lam(q)
            build = time.perf_counter() - start
            agree("symengine", ref, [out[0], np.asarray(out[1:])])
            rows.append(dict(case=case + " build+1st", system="symengine LLVM", seconds=build))
            rows.append(dict(case=case + " eval", system="symengine LLVM",
                             seconds=median_time(lambda: lam(q))))
    report("W2 Lennard-Jones scalar graph", rows,
           notes=f"target (N=60): symgrad build + first call ≤ 1 s, eval ≤ 0.75× symengine "
                 f"(symengine is run up to N={symengine_max}: its N=60 build takes about a minute)")


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (10, 30, 60))
