"""W9 — CasADi's single-shooting examples: compile (build + first call) and steady call of
the NLP functions a solver evaluates (objective, constraints, their gradient and Jacobian).

* rocket: 50 control intervals × 20 explicit Euler steps of (position, speed, mass);
  objective ‖U‖², constraints the final position and speed (CasADi's rocket example).
* Van der Pol: 20 intervals × 4 RK4 steps with quadrature; objective the integrated
  cost, constraints x₁ at each interval's end (CasADi's direct_single_shooting.py).

symgrad is measured written unrolled (a graph of every step) and with ``scan`` (the
intervals an outer scan, the integrator steps an inner ``fori_loop``); CasADi as its
examples write it (MX, with the integrator a Function called per interval), and jax with
``lax.scan``; the ratios are against symgrad's scan form.  Run by hand:
``python w9_shooting.py``."""
import time

import numpy as np

from common import agree, cold, median_time, peer, report

ROCKET_U = np.linspace(0.1, 0.6, 50)
VDP_U = 0.3 * np.sin(np.arange(20.0))


# ---- the dynamics, written once for every system (ops: sin-free arithmetic only) --------------
def rocket_step(x, u, dt=0.01):
    s, v, m = x
    return (s + dt * v, v + dt * ((u - 0.05 * v * v) / m), m + dt * (-0.1 * u * u))


def vdp_rhs(x, u):
    x1, x2 = x
    return ((1 - x2 * x2) * x1 - x2 + u, x1), x1 * x1 + x2 * x2 + u * u


def vdp_rk4(x, q, u, dt=10.0 / 20 / 4):
    def shift(a, k, h):
        return tuple(ai + h * ki for ai, ki in zip(a, k))
    k1, q1 = vdp_rhs(x, u)
    k2, q2 = vdp_rhs(shift(x, k1, dt / 2), u)
    k3, q3 = vdp_rhs(shift(x, k2, dt / 2), u)
    k4, q4 = vdp_rhs(shift(x, k3, dt), u)
    x = tuple(xi + dt / 6 * (a + 2 * b + 2 * c + d) for xi, a, b, c, d in zip(x, k1, k2, k3, k4))
    return x, q + dt / 6 * (q1 + 2 * q2 + 2 * q3 + q4)


# ---- symgrad ---------------------------------------------------------------------------------
def symgrad_rocket(form):
    from symgrad.compiler import Graph, fori_loop, scan, stack
    g = Graph()
    U = g.input("U", (50,))
    x = (g.const(0.0), g.const(0.0), g.const(1.0))
    if form == "unrolled":
        for k in range(50):
            for _ in range(20):
                x = rocket_step(x, U[k])
    else:
        def interval(x, u):
            return fori_loop(0, 20, lambda j, x: rocket_step(x, u), x), None
        x, _ = scan(interval, x, U)
    J, G = (U * U).sum(), stack([x[0], x[1]])
    return g.compile([J, G], wrt=[U])


def symgrad_vdp(form):
    from symgrad.compiler import Graph, fori_loop, scan, stack
    g = Graph()
    U = g.input("U", (20,))
    x, J = (g.const(0.0), g.const(1.0)), 0.0
    if form == "unrolled":
        ends = []
        for k in range(20):
            q = 0.0
            for _ in range(4):
                x, q = vdp_rk4(x, q, U[k])
            J = J + q
            ends.append(x[0])
        G = stack(ends)
    else:
        def interval(carry, u):
            x, J = carry
            x, q = fori_loop(0, 4, lambda j, xq: vdp_rk4(xq[0], xq[1], u), (x, 0.0))
            return (x, J + q), x[0]
        (x, J), G = scan(interval, (x, 0.0), U)
    return g.compile([J, G], wrt=[U])


def symgrad_call(f, u):
    value = f(u)
    (dJ,), (dG,) = f.jacobian(u)
    return [value[0], value[1], dJ, dG]


# ---- peers -----------------------------------------------------------------------------------
def casadi_rocket(ca):
    x, u = ca.MX.sym("x", 3), ca.MX.sym("u")
    xj = ca.vertsplit(x)
    for _ in range(20):
        xj = rocket_step(xj, u)
    F = ca.Function("F", [x, u], [ca.vertcat(*xj)])
    U = ca.MX.sym("U", 50)
    X = ca.MX([0, 0, 1])
    for k in range(50):
        X = F(X, U[k])
    J, G = ca.dot(U, U), X[0:2]
    return ca.Function("nlp", [U], [J, G, ca.gradient(J, U), ca.jacobian(G, U)])


def casadi_vdp(ca):
    x, u, q = ca.MX.sym("x", 2), ca.MX.sym("u"), 0.0
    xs = ca.vertsplit(x)
    for _ in range(4):
        xs, q = vdp_rk4(xs, q, u)
    F = ca.Function("F", [x, u], [ca.vertcat(*xs), q])
    U = ca.MX.sym("U", 20)
    X, J, ends = ca.MX([0, 1]), 0, []
    for k in range(20):
        X, Q = F(X, U[k])
        J = J + Q
        ends.append(X[0])
    G = ca.vertcat(*ends)
    return ca.Function("nlp", [U], [J, G, ca.gradient(J, U), ca.jacobian(G, U)])


def jax_problem(jax, which):
    import jax.numpy as jnp

    def rocket(U):
        def interval(x, u):
            x = jax.lax.fori_loop(0, 20, lambda j, x: jnp.stack(rocket_step(tuple(x), u)), x)
            return x, None
        x, _ = jax.lax.scan(interval, jnp.array([0.0, 0.0, 1.0]), U)
        return jnp.dot(U, U), x[:2]

    def vdp(U):
        def interval(carry, u):
            x, J = carry

            def step(j, xq):
                x, q = vdp_rk4(tuple(xq[:2]), xq[2], u)
                return jnp.stack([*x, q])
            xq = jax.lax.fori_loop(0, 4, step, jnp.concatenate([x, jnp.zeros(1)]))
            return (xq[:2], J + xq[2]), xq[0]
        (x, J), G = jax.lax.scan(interval, (jnp.array([0.0, 1.0]), 0.0), U)
        return J, G

    fn = rocket if which == "rocket" else vdp

    def nlp(U):
        J, G = fn(U)
        return J, G, jax.grad(lambda u: fn(u)[0])(U), jax.jacrev(lambda u: fn(u)[1])(U)
    return jax.jit(nlp)


def main():
    rows = []
    for which, u0 in (("rocket", ROCKET_U), ("Van der Pol", VDP_U)):
        ref = None
        for form in ("unrolled", "scan"):
            cold()
            start = time.perf_counter()
            f = (symgrad_rocket if which == "rocket" else symgrad_vdp)(form)
            out = symgrad_call(f, u0)
            system = "symgrad" if form == "scan" else "symgrad unrolled"   # the ratios' base
            rows.append(dict(case=f"{which} compile", system=system,
                             seconds=time.perf_counter() - start))
            if ref is None:
                ref = out
            else:
                agree(f"symgrad {form}", ref, out)
            rows.append(dict(case=f"{which} call", system=system,
                             seconds=median_time(lambda: symgrad_call(f, u0))))
        ca = peer("casadi")
        if ca:
            cold()
            start = time.perf_counter()
            cf = (casadi_rocket if which == "rocket" else casadi_vdp)(ca)
            out = cf(u0)
            rows.append(dict(case=f"{which} compile", system="casadi MX",
                             seconds=time.perf_counter() - start))
            agree("casadi", ref, [float(out[0]), np.asarray(out[1]).ravel(),
                                  np.asarray(out[2]).ravel(), np.asarray(out[3])])
            rows.append(dict(case=f"{which} call", system="casadi MX",
                             seconds=median_time(lambda: cf(u0))))
        jax = peer("jax")
        if jax:
            jax.config.update("jax_enable_x64", True)
            cold()
            start = time.perf_counter()
            jf = jax_problem(jax, "rocket" if which == "rocket" else "vdp")
            out = [np.asarray(a) for a in jf(u0)]
            rows.append(dict(case=f"{which} compile", system="jax.jit scan",
                             seconds=time.perf_counter() - start))
            agree("jax", ref, [float(out[0]), out[1], out[2], out[3]])
            rows.append(dict(case=f"{which} call", system="jax.jit scan", seconds=median_time(
                lambda: [np.asarray(a) for a in jf(u0)])))
    report("W9 CasADi shooting problems", rows,
           notes="target: compile within 2× of CasADi's, calls faster than CasADi's")


if __name__ == "__main__":
    main()
