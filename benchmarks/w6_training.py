"""W6 — document 003's manual linear model, 100 SGD steps through symgrad.runtime."""
from common import agree, median_time, peer, report


def loop(torch, nn, optim):
    w = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([0.0], requires_grad=True)
    x, y_true = torch.tensor([2.0]), torch.tensor([4.0])
    loss_fn, optimizer = nn.MSELoss(), optim.SGD([w, b], lr=0.1)
    for _ in range(100):
        loss = loss_fn(w * x + b, y_true)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return [w.detach().numpy().copy(), b.detach().numpy().copy()]


def main():
    import symgrad.runtime as sg
    ref = loop(sg, sg.nn, sg.optim)
    rows = [dict(case="100 steps", system="symgrad.runtime",
                 seconds=median_time(lambda: loop(sg, sg.nn, sg.optim)))]
    torch = peer("torch")
    if torch:
        torch.set_num_threads(1)
        agree("torch", ref, loop(torch, torch.nn, torch.optim), rtol=1e-6)
        rows.append(dict(case="100 steps", system="torch eager",
                         seconds=median_time(lambda: loop(torch, torch.nn, torch.optim))))
    jax = peer("jax")
    if jax:
        import jax.numpy as jnp

        @jax.jit
        def step(w, b):
            gw, gb = jax.grad(lambda w, b: jnp.mean((w * 2.0 + b - 4.0) ** 2), (0, 1))(w, b)
            return w - 0.1 * gw, b - 0.1 * gb

        def jloop():
            w, b = jnp.array([1.0], jnp.float32), jnp.array([0.0], jnp.float32)
            for _ in range(100):
                w, b = step(w, b)
            return [np.asarray(w), np.asarray(b)]
        import numpy as np
        agree("jax", ref, jloop(), rtol=1e-6)
        rows.append(dict(case="100 steps", system="jax.jit step", seconds=median_time(jloop)))
    for r in rows:
        r["system"] = r["system"]
    report("W6 training loop (document 003)", rows, baseline="symgrad.runtime",
           notes="target: symgrad.runtime ≤ 0.35× torch eager")


if __name__ == "__main__":
    main()
