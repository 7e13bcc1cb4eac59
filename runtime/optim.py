"""optim: SGD (momentum, weight decay) and Adam, updating parameters in place."""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, no_grad


class Optimizer:
    def __init__(self, params, defaults):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        if isinstance(params[0], dict):
            raise NotImplementedError("parameter groups are not supported yet; pass a list "
                                      "of tensors")
        for p in params:
            if not isinstance(p, Tensor) or not p.is_leaf or not p.requires_grad:
                raise ValueError("optimizers take leaf tensors that require grad")
        self.params, self.defaults, self.state = params, defaults, {}

    def _gradient(self, p):
        """The parameter's gradient with weight decay (L2) added: g + wd·p."""
        g = p.grad._data
        wd = self.defaults["weight_decay"]
        return g + wd * p._data if wd else g

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad._data[...] = 0


class SGD(Optimizer):
    """p ← p − lr·(g + wd·p), with optional (Nesterov-free) momentum as PyTorch."""

    def __init__(self, params, lr=1e-3, momentum=0.0, weight_decay=0.0, dampening=0.0):
        if lr < 0:
            raise ValueError(f"invalid learning rate {lr}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      dampening=dampening))

    @no_grad()
    def step(self):
        d = self.defaults
        for p in self.params:
            if p.grad is None:
                continue
            g = self._gradient(p)
            if d["momentum"]:
                buf = self.state.get(id(p))
                buf = g.copy() if buf is None else d["momentum"] * buf + (1 - d["dampening"]) * g
                self.state[id(p)] = buf
                g = buf
            p._data -= np.asarray(d["lr"] * g, dtype=p._data.dtype)


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @no_grad()
    def step(self):
        d = self.defaults
        b1, b2 = d["betas"]
        for p in self.params:
            if p.grad is None:
                continue
            g = self._gradient(p)
            m, v, t = self.state.get(id(p), (np.zeros_like(g), np.zeros_like(g), 0))
            t += 1
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            self.state[id(p)] = (m, v, t)
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            p._data -= np.asarray(d["lr"] * m_hat / (np.sqrt(v_hat) + d["eps"]),
                                  dtype=p._data.dtype)
