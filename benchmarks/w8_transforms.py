"""W8 — transforms: forward mode, sparse Jacobians, vmap (issue #15).

(a) JVP of the 1,000-step chain `h = sin(h)·1.0001 + 0.1·h·h` on a 1000-vector against a
    forward pass of the same function (target ≤ 1.2×), jax's jitted jvp / forward beside.
(b) The Jacobian of a discretised 1-D heat equation's right-hand side with a cubic
    source, n = 10⁴ (banded): sparse (three sweeps) against the dense Jacobian (10⁴
    sweeps) and jax.jit(jax.jacfwd) (target: ≥ 100× the dense one, faster than jax).
(c) vmap of document 002's value + VJP (`u4 = u2·(u1 + u2)`) over 10⁶ points against
    jax.jit(jax.vmap(...)) and the hand-written numpy expression."""
import sys
import time

import numpy as np

from common import agree, median_time, peer, report

import symgrad.compiler as C
from symgrad.compiler import Graph, vmap


def chain(n=1000, k=1000):
    g = Graph()
    h0 = g.input("h", (n,))
    h = h0
    for _ in range(k):
        h = C.sin(h) * 1.0001 + 0.1 * h * h
    return g.compile(h.sum(), wrt=[h0], mode="jvp")


def heat(n):
    g = Graph()
    u = g.input("u", (n,))
    p = C.pad(u, ((1, 1),))
    rhs = (p[:-2] - 2.0 * p[1:-1] + p[2:]) * float((n + 1) ** 2) - u ** 3
    return g.compile(rhs, wrt=[u])


def main(n_heat=10_000, points=1_000_000):
    rows = []
    jax = peer("jax")
    if jax is not None:
        jax.config.update("jax_enable_x64", True)
        jnp = jax.numpy

    # (a) JVP against the forward pass
    f = chain()
    h = np.linspace(-0.05, 0.05, 1000)
    u = np.ones(1000)
    t_fwd = median_time(lambda: f(h))
    t_jvp = median_time(lambda: f.jvp(h, tangent=u))
    rows += [{"case": "chain forward", "system": "symgrad", "seconds": t_fwd},
             {"case": "chain jvp", "system": "symgrad", "seconds": t_jvp}]
    print(f"chain: jvp / forward = {t_jvp / t_fwd:.2f} (target ≤ 1.2)")
    value, tangent = f.jvp(h, tangent=u)
    if jax is not None:
        def body(x, _):
            return jnp.sin(x) * 1.0001 + 0.1 * x * x, None

        def forward(x):
            return jax.lax.scan(body, x, None, length=1000)[0].sum()
        jf = jax.jit(forward)
        jj = jax.jit(lambda x, t: jax.jvp(forward, (x,), (t,)))
        agree("jax jvp", [value, tangent], jj(jnp.asarray(h), jnp.asarray(u)))
        t_jf = median_time(lambda: jf(jnp.asarray(h)).block_until_ready())
        t_jj = median_time(lambda: jj(jnp.asarray(h), jnp.asarray(u))[1].block_until_ready())
        rows += [{"case": "chain forward", "system": "jax.jit scan", "seconds": t_jf},
                 {"case": "chain jvp", "system": "jax.jit scan", "seconds": t_jj}]
        print(f"  jax: jvp / forward = {t_jj / t_jf:.2f}")

    # (b) a banded Jacobian
    fh = heat(n_heat)
    x = np.sin(np.linspace(0, 3, n_heat))
    start = time.perf_counter()
    (J,) = fh.jacobian(x, sparse=True)
    first = time.perf_counter() - start
    t_sparse = median_time(lambda: fh.jacobian(x, sparse=True))
    start = time.perf_counter()
    (dense,) = fh.jacobian(x)
    t_dense = time.perf_counter() - start
    np.testing.assert_allclose(J.toarray(), dense, rtol=1e-12, atol=1e-6)
    del dense
    rows += [{"case": f"heat J n={n_heat}", "system": "symgrad", "seconds": t_sparse},
             {"case": f"heat J n={n_heat}", "system": "symgrad sparse first",
              "seconds": first},
             {"case": f"heat J n={n_heat}", "system": "symgrad dense", "seconds": t_dense}]
    print(f"heat n={n_heat}: sparse {t_sparse * 1e3:.2f} ms (first call, with the pattern "
          f"and colouring, {first:.2f} s), dense {t_dense:.2f} s: "
          f"{t_dense / t_sparse:.0f}× (target ≥ 100×)")
    if jax is not None:
        def rhs(v):
            p = jnp.pad(v, (1, 1))
            return (p[:-2] - 2.0 * p[1:-1] + p[2:]) * float((n_heat + 1) ** 2) - v ** 3
        jac = jax.jit(jax.jacfwd(rhs))
        jJ = jac(jnp.asarray(x))
        agree("jax jacfwd", [J.diagonal(), J.diagonal(1)],
              [np.diagonal(np.asarray(jJ)), np.diagonal(np.asarray(jJ), 1)])
        del jJ
        rows.append({"case": f"heat J n={n_heat}", "system": "jax.jit jacfwd",
                     "seconds": median_time(lambda: jac(jnp.asarray(x)).block_until_ready(),
                                            min_runs=3, min_seconds=0.0)})

    # (c) vmap of document 002's value + VJP
    g = Graph()
    u1, u2 = g.input("u1"), g.input("u2")
    f002 = vmap(g.compile(u2 * (u1 + u2), wrt=[u1, u2]))
    rng = np.random.default_rng(0)
    a, b, s = rng.random(points), rng.random(points), rng.random(points)
    mine = f002.vjp(a, b, seed=s)
    rows.append({"case": f"002 vmap {points:.0e}", "system": "symgrad",
                 "seconds": median_time(lambda: f002.vjp(a, b, seed=s))})

    def by_hand(u1, u2, s):
        u3 = u1 + u2
        return u2 * u3, (s * u2, s * u3 + s * u2)
    agree("numpy", [mine[0], *mine[1]], [by_hand(a, b, s)[0], *by_hand(a, b, s)[1]])
    rows.append({"case": f"002 vmap {points:.0e}", "system": "numpy",
                 "seconds": median_time(lambda: by_hand(a, b, s))})
    if jax is not None:
        def value_and_vjp(u1, u2, s):
            y, pull = jax.vjp(lambda p, q: q * (p + q), u1, u2)
            return y, pull(s)
        jv = jax.jit(jax.vmap(value_and_vjp))
        out = jv(jnp.asarray(a), jnp.asarray(b), jnp.asarray(s))
        agree("jax vmap", [mine[0], *mine[1]], [out[0], *out[1]])
        rows.append({"case": f"002 vmap {points:.0e}", "system": "jax.jit(vmap)",
                     "seconds": median_time(lambda: jax.block_until_ready(
                         jv(jnp.asarray(a), jnp.asarray(b), jnp.asarray(s))))})
    report("W8 transforms", rows, notes="heat J: symgrad = sparse=True (3 sweeps); "
           "002 vmap: symgrad = vmap(f).vjp")


if __name__ == "__main__":
    main(*[int(float(a)) for a in sys.argv[1:]])
