"""W4 — one SGD step of document 002's network, B=256, 784→128→10, float32.

The two large products run in OpenBLAS (numpy's, or symgrad's private copy of it with
the AVX-512 kernels), so the result depends on which OpenBLAS kernels run: the script
prints them.  Some machines' environments pin ``OPENBLAS_CORETYPE`` (and
``OPENBLAS_L2_SIZE``) for old OpenBLAS builds; measure a current numpy with both unset
for that command alone: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python w4_mlp.py``."""
import ctypes
import glob
import os

import numpy as np

from common import agree, median_time, peer, report
from symgrad.compiler import Graph, sigmoid

B, N0, N1, N2, LR = 256, 784, 128, 10, 0.01
SHAPES = [(N1, N0), (N1,), (B, N0), (N2, N1), (N2,), (B, N2)]


def openblas_core() -> str:
    """The kernels numpy's OpenBLAS chose (its core name), or "?" when not at hand."""
    here = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in glob.glob(os.path.join(here, "libscipy_openblas*.so*")):
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename"):
            get = getattr(ctypes.CDLL(path), name, None)
            if get is not None:
                get.restype = ctypes.c_char_p
                return get().decode()
    return "?"


def main():
    from symgrad.compiler.backend import jit
    print(f"  numpy's OpenBLAS kernels: {openblas_core()}; OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; symgrad's gemm: {jit.blas()}")
    rng = np.random.default_rng(0)
    init = [(rng.standard_normal(s) * 0.05).astype(np.float32) for s in SHAPES]
    g = Graph(np.float32)
    W1, b1, x, W2, b2, yt = [g.input(n, s) for n, s in zip(["W1", "b1", "x", "W2", "b2", "yt"],
                                                           SHAPES)]
    E = 0.5 * ((sigmoid(sigmoid(x @ W1.T + b1) @ W2.T + b2) - yt) ** 2).sum()
    f = g.compile([E], [W1, b1, W2, b2])
    params = [v.copy() for v in init]

    def step():
        E, grads = f.vjp(*params)
        for k, gr in zip((0, 1, 3, 4), grads):
            params[k] -= LR * gr
        return E
    ref_E, ref_grads = f.vjp(*init)
    ref = [ref_E, *ref_grads]
    rows = [dict(case="one step", system="symgrad", seconds=median_time(step))]

    # the same step written as a PyTorch program on symgrad.runtime, compiled whole
    import symgrad.runtime as sg
    P = [sg.tensor(init[k].copy(), requires_grad=True) for k in (0, 1, 3, 4)]
    sx, syt = sg.tensor(init[2]), sg.tensor(init[5])
    opt = sg.optim.SGD(P, lr=LR)

    @sg.compile
    def sg_step(x, yt):
        W1, b1, W2, b2 = P
        E = 0.5 * ((sg.sigmoid(sg.sigmoid(x @ W1.T + b1) @ W2.T + b2) - yt) ** 2).sum()
        opt.zero_grad()
        E.backward()
        opt.step()
        return E
    E0 = sg_step(sx, syt)
    agree("symgrad compile", ref, [E0.item(), *[p.grad.numpy() for p in P]], rtol=1e-6,
          atol=1e-7)
    rows.append(dict(case="one step", system="symgrad compile",
                     seconds=median_time(lambda: sg_step(sx, syt))))

    torch = peer("torch")
    if torch:
        torch.set_num_threads(1)
        T = [torch.tensor(v.copy(), requires_grad=k in (0, 1, 3, 4)) for k, v in enumerate(init)]

        def loss(T):
            return 0.5 * ((torch.sigmoid(torch.sigmoid(T[2] @ T[0].T + T[1]) @ T[3].T + T[4])
                           - T[5]) ** 2).sum()
        E0 = loss(T)
        agree("torch", ref, [E0.item(), *[v.numpy() for v in
                                          torch.autograd.grad(E0, [T[0], T[1], T[3], T[4]])]],
              rtol=2e-4, atol=1e-6)

        def tstep():
            E = loss(T)
            gs = torch.autograd.grad(E, [T[0], T[1], T[3], T[4]])
            with torch.no_grad():
                for p, gr in zip((T[0], T[1], T[3], T[4]), gs):
                    p -= LR * gr
        rows.append(dict(case="one step", system="torch eager", seconds=median_time(tstep)))

    jax = peer("jax")
    if jax:
        import jax.numpy as jnp

        def jloss(p, x, yt):
            W1, b1, W2, b2 = p
            return 0.5 * jnp.sum((jax.nn.sigmoid(jax.nn.sigmoid(x @ W1.T + b1) @ W2.T + b2)
                                  - yt) ** 2)

        @jax.jit
        def jstep(p, x, yt):
            E, gs = jax.value_and_grad(jloss)(p, x, yt)
            return E, gs, [w - LR * g for w, g in zip(p, gs)]
        jp = [jnp.asarray(init[k]) for k in (0, 1, 3, 4)]
        jx, jyt = jnp.asarray(init[2]), jnp.asarray(init[5])
        E0, gs, _ = jstep(jp, jx, jyt)
        agree("jax", ref, [float(E0), *[np.asarray(v) for v in gs]], rtol=2e-4, atol=1e-6)
        state = {"p": jp}

        def jrun():
            E, _, state["p"] = jstep(state["p"], jx, jyt)
            E.block_until_ready()
        rows.append(dict(case="one step", system="jax.jit", seconds=median_time(jrun)))
    report("W4 MLP step (float32, single thread)", rows, baseline="symgrad compile",
           notes="targets (#16): symgrad compile ≤ 0.8× torch eager and ≤ 1.0× jax.jit; "
                 "'symgrad' is the graph API's value-and-gradient plus a numpy update")


if __name__ == "__main__":
    main()
