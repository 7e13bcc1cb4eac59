"""W6 — document 003's linear model, 100 SGD steps: symgrad.runtime eagerly and with
``symgrad.runtime.compile`` (the whole step one native call), torch eager, a jax.jit step."""
import numpy as np

from common import agree, median_time, peer, report


def loop(torch, nn, optim, compiled=False, steps=100):
    """100 steps; with ``compiled`` the step function is made (and traced) once, outside
    the timed loop, as a training script does."""
    w = torch.tensor([1.0], requires_grad=True)
    b = torch.tensor([0.0], requires_grad=True)
    x, y_true = torch.tensor([2.0]), torch.tensor([4.0])
    loss_fn, optimizer = nn.MSELoss(), optim.SGD([w, b], lr=0.1)

    def step(x, y_true):
        loss = loss_fn(w * x + b, y_true)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss
    if compiled:
        step = compiled(step)

    def run():
        with torch.no_grad():
            w.copy_(torch.tensor([1.0]))
            b.copy_(torch.tensor([0.0]))
        for _ in range(steps):
            step(x, y_true)
        return [w.detach().numpy().copy(), b.detach().numpy().copy()]
    return run


def main():
    import symgrad.runtime as sg
    eager = loop(sg, sg.nn, sg.optim)
    ref = eager()
    compiled = loop(sg, sg.nn, sg.optim, compiled=sg.compile)
    same = [np.array_equal(a, b) for a, b in zip(ref, compiled())]
    print(f"  compiled step's parameters equal the eager runtime's bit for bit: {all(same)}")
    rows = [dict(case="100 steps", system="symgrad.runtime",
                 seconds=median_time(eager)),
            dict(case="100 steps", system="symgrad compile",
                 seconds=median_time(compiled))]
    torch = peer("torch")
    if torch:
        torch.set_num_threads(1)
        teager = loop(torch, torch.nn, torch.optim)
        agree("torch", ref, teager(), rtol=1e-6)
        rows.append(dict(case="100 steps", system="torch eager", seconds=median_time(teager)))
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
        agree("jax", ref, jloop(), rtol=1e-6)
        rows.append(dict(case="100 steps", system="jax.jit step", seconds=median_time(jloop)))
    report("W6 training loop (document 003)", rows, baseline="symgrad compile",
           notes="targets: symgrad compile ≤ 0.1× torch eager and ≤ 1.5× the jax.jit step "
                 "(#16); symgrad.runtime eagerly ≤ 0.35× torch eager")


if __name__ == "__main__":
    main()
