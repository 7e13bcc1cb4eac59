"""optim: PyTorch's optimizers, updating parameters in place.

Each ``_update`` transcribes PyTorch's single-tensor update (the CPU default) step for
step, in the parameter's dtype, so the numbers follow PyTorch's (to an ulp where
PyTorch's kernels fuse a multiply-add).  Parameters are given as a list or as parameter
groups (dicts with their own options); parameters without a gradient, frozen ones
included, are skipped as in PyTorch.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, _mode, clear_grad, no_grad


class Optimizer:
    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = {}
        self.param_groups = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Tensors or dicts, but got a Tensor")
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    def add_param_group(self, group):
        group = dict(group)
        params = group["params"]
        group["params"] = [params] if isinstance(params, Tensor) else list(params)
        for p in group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params "
                                f"is {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in group["params"]):
            raise ValueError("some parameters appear in more than one parameter group")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        for group in self.param_groups:
            for p in group["params"]:
                clear_grad(p, set_to_none)

    @no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            from .tensor import enable_grad
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, self.state.setdefault(p, {}), group)
        return loss

    def _update(self, p, state, group):
        """One parameter's update: the numbers this step needs computed in Python
        (``_scalars``, which also counts the step), then the array arithmetic
        (``_arrays``), written once for numpy arrays and for graph nodes, so a compiled
        step (``compile``) performs exactly the same operations."""
        x = p._data
        trace = _mode.trace
        if not state:
            self._init_state(state, x, group)
        had = _buffers(state)
        scalars = self._scalars(state, group)
        if trace is not None and trace.unfinished is None:
            tx, tgrad, tbufs, tscalars = trace.optimizer_update(self, p, state, group,
                                                                list(scalars))
            traced = self._arrays(tx, _ascent(tgrad, group), tbufs, tscalars, group)
        grad = _ascent(p._grad._data, group)
        typed = {k: x.dtype.type(v) for k, v in scalars.items()}
        new_x, new_bufs = self._arrays(x, grad, dict(had), typed, group)
        for key, value in new_bufs.items():
            if key in state:
                np.copyto(state[key], value)
            else:
                state[key] = np.array(value, dtype=x.dtype)
        _write(p, new_x)
        if trace is not None:
            if _buffers(state).keys() != had.keys():     # SGD's first momentum step
                trace.unfinished = f"{type(self).__name__} made a buffer in this call"
            elif trace.unfinished is None:
                trace.optimizer_result(self, p, *traced)

    def _init_state(self, state, x, group):
        """The buffers a parameter's first step starts from."""

    def _structure(self, group, state) -> tuple:
        """What decides ``_arrays``' code path (for a compiled step's guard)."""
        return (group.get("maximize"),)

    def _scalars(self, state, group) -> dict:
        """This step's numbers, as Python floats (named; advances the step count)."""
        raise NotImplementedError

    def _arrays(self, x, grad, bufs, s, group):
        """(new parameter, new buffers) from arrays or graph nodes; ``s``: ``_scalars``
        in the parameter's dtype."""
        raise NotImplementedError

    def state_dict(self):
        index = {id(p): k for k, p in enumerate(p for g in self.param_groups
                                                for p in g["params"])}
        groups = [{**{k: v for k, v in g.items() if k != "params"},
                   "params": [index[id(p)] for p in g["params"]]} for g in self.param_groups]
        state = {index[id(p)]: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                for k, v in s.items()} for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        params = [p for g in self.param_groups for p in g["params"]]
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {params[int(k)]: dict(v) for k, v in state_dict["state"].items()}

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for k, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            lines += [f"    {key}: {value}" for key, value in sorted(g.items())
                      if key != "params"]
        return "\n".join(lines + [")"])


def _write(p: Tensor, value):
    """An in-place update of a parameter: its version counts it, as in PyTorch."""
    p._bump()
    np.copyto(p._data, value, casting="same_kind")


def _ascent(grad, group):
    """The direction the update follows: the gradient, negated when maximizing."""
    return -grad if group.get("maximize") else grad


def _buffers(state) -> dict:
    return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}


class SGD(Optimizer):
    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Invalid learning rate, momentum or weight_decay: {lr}, "
                             f"{momentum}, {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize))

    def _structure(self, group, state):
        return (group["maximize"], group["weight_decay"] != 0, group["momentum"] != 0,
                group["nesterov"], "momentum_buffer" in state)

    def _scalars(self, state, group):
        s = {"neg_lr": -group["lr"]}
        if group["weight_decay"]:
            s["wd"] = group["weight_decay"]
        if group["momentum"]:
            s.update(momentum=group["momentum"], damp=1 - group["dampening"])
        return s

    def _arrays(self, x, grad, bufs, s, group):
        if group["weight_decay"]:
            grad = grad + s["wd"] * x
        if group["momentum"]:
            buf = bufs.get("momentum_buffer")
            buf = grad if buf is None else buf * s["momentum"] + s["damp"] * grad
            bufs["momentum_buffer"] = buf
            grad = grad + s["momentum"] * buf if group["nesterov"] else buf
        return x + s["neg_lr"] * grad, bufs


class Adam(Optimizer):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False):
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"Invalid lr, eps or betas: {lr}, {eps}, {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, maximize=maximize,
                                      decoupled=decoupled_weight_decay))

    def _init_state(self, state, x, group):
        state.update(step=0, exp_avg=np.zeros_like(x), exp_avg_sq=np.zeros_like(x))
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = np.zeros_like(x)

    def _structure(self, group, state):
        return (group["maximize"], group["weight_decay"] != 0, group["decoupled"],
                group["amsgrad"])

    def _scalars(self, state, group):
        b1, b2 = group["betas"]
        lr, wd = group["lr"], group["weight_decay"]
        state["step"] += 1
        step = state["step"]
        s = {"one_minus_b1": 1 - b1, "b2": b2, "one_minus_b2": 1 - b2,
             "neg_step_size": -(lr / (1 - b1 ** step)),
             "correction2": (1 - b2 ** step) ** 0.5, "eps": group["eps"]}
        if wd and group["decoupled"]:
            s["decay"] = 1 - lr * wd
        elif wd:
            s["wd"] = wd
        return s

    def _arrays(self, x, grad, bufs, s, group):
        if "decay" in s:
            x = x * s["decay"]
        elif "wd" in s:
            grad = grad + s["wd"] * x
        m, v = bufs["exp_avg"], bufs["exp_avg_sq"]
        m = m + s["one_minus_b1"] * (grad - m)                  # lerp_(grad, 1 − β₁)
        v = v * s["b2"] + s["one_minus_b2"] * (grad * grad)     # mul_, addcmul_
        bufs.update(exp_avg=m, exp_avg_sq=v)
        if group["amsgrad"]:
            v = bufs["max_exp_avg_sq"] = np.maximum(bufs["max_exp_avg_sq"], v)
        denom = np.sqrt(v) / s["correction2"] + s["eps"]
        return x + s["neg_step_size"] * (m / denom), bufs


class AdamW(Adam):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, **kwargs):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize,
                         decoupled_weight_decay=True)


class RMSprop(Optimizer):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, *, maximize=False, **kwargs):
        if lr < 0 or eps < 0 or alpha < 0 or momentum < 0:
            raise ValueError(f"Invalid lr, eps, alpha or momentum: {lr}, {eps}, {alpha}, "
                             f"{momentum}")
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered,
                                      maximize=maximize))

    def _init_state(self, state, x, group):
        state.update(step=0, square_avg=np.zeros_like(x))
        if group["momentum"] > 0:
            state["momentum_buffer"] = np.zeros_like(x)
        if group["centered"]:
            state["grad_avg"] = np.zeros_like(x)

    def _structure(self, group, state):
        return (group["maximize"], group["weight_decay"] != 0, group["momentum"] > 0,
                group["centered"])

    def _scalars(self, state, group):
        state["step"] += 1
        s = {"alpha": group["alpha"], "one_minus_alpha": 1 - group["alpha"],
             "eps": group["eps"], "neg_lr": -group["lr"]}
        if group["weight_decay"]:
            s["wd"] = group["weight_decay"]
        if group["momentum"] > 0:
            s["momentum"] = group["momentum"]
        return s

    def _arrays(self, x, grad, bufs, s, group):
        if "wd" in s:
            grad = grad + s["wd"] * x
        sq = bufs["square_avg"] = \
            bufs["square_avg"] * s["alpha"] + s["one_minus_alpha"] * (grad * grad)
        if group["centered"]:
            ga = bufs["grad_avg"] = \
                bufs["grad_avg"] + s["one_minus_alpha"] * (grad - bufs["grad_avg"])
            avg = np.sqrt(sq - ga * ga)
        else:
            avg = np.sqrt(sq)
        avg = avg + s["eps"]
        if group["momentum"] > 0:
            buf = bufs["momentum_buffer"] = bufs["momentum_buffer"] * s["momentum"] + grad / avg
            return x + s["neg_lr"] * buf, bufs
        return x + s["neg_lr"] * (grad / avg), bufs


class Adagrad(Optimizer):
    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, *, maximize=False, **kwargs):
        if lr < 0 or lr_decay < 0 or weight_decay < 0 or eps < 0:
            raise ValueError(f"Invalid lr, lr_decay, weight_decay or eps: {lr}, {lr_decay}, "
                             f"{weight_decay}, {eps}")
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize))

    def _init_state(self, state, x, group):
        state.update(step=0, sum=np.full_like(x, group["initial_accumulator_value"]))

    def _structure(self, group, state):
        return (group["maximize"], group["weight_decay"] != 0)

    def _scalars(self, state, group):
        state["step"] += 1
        s = {"neg_clr": -(group["lr"] / (1 + (state["step"] - 1) * group["lr_decay"])),
             "eps": group["eps"]}
        if group["weight_decay"]:
            s["wd"] = group["weight_decay"]
        return s

    def _arrays(self, x, grad, bufs, s, group):
        if "wd" in s:
            grad = grad + s["wd"] * x
        total = bufs["sum"] = bufs["sum"] + grad * grad
        std = np.sqrt(total) + s["eps"]
        return x + s["neg_clr"] * (grad / std), bufs


class lr_scheduler:
    """torch.optim.lr_scheduler: StepLR, MultiStepLR, ExponentialLR, LambdaLR."""

    class _Scheduler:
        def __init__(self, optimizer, last_epoch=-1):
            self.optimizer = optimizer
            self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in
                             optimizer.param_groups]
            self.last_epoch = last_epoch
            self.step()

        def step(self, epoch=None):
            self.last_epoch = self.last_epoch + 1 if epoch is None else epoch
            for group, lr in zip(self.optimizer.param_groups, self.get_lr()):
                group["lr"] = lr

        def get_last_lr(self):
            return [g["lr"] for g in self.optimizer.param_groups]

    class StepLR(_Scheduler):
        def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
            self.step_size, self.gamma = step_size, gamma
            super().__init__(optimizer, last_epoch)

        def get_lr(self):
            return [b * self.gamma ** (self.last_epoch // self.step_size)
                    for b in self.base_lrs]

    class MultiStepLR(_Scheduler):
        def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
            self.milestones, self.gamma = sorted(milestones), gamma
            super().__init__(optimizer, last_epoch)

        def get_lr(self):
            passed = sum(1 for m in self.milestones if m <= self.last_epoch)
            return [b * self.gamma ** passed for b in self.base_lrs]

    class ExponentialLR(_Scheduler):
        def __init__(self, optimizer, gamma, last_epoch=-1):
            self.gamma = gamma
            super().__init__(optimizer, last_epoch)

        def get_lr(self):
            return [b * self.gamma ** self.last_epoch for b in self.base_lrs]

    class LambdaLR(_Scheduler):
        def __init__(self, optimizer, lr_lambda, last_epoch=-1):
            self.lr_lambdas = lr_lambda if isinstance(lr_lambda, list) else \
                [lr_lambda] * len(optimizer.param_groups)
            super().__init__(optimizer, last_epoch)

        def get_lr(self):
            return [b * f(self.last_epoch) for b, f in zip(self.base_lrs, self.lr_lambdas)]


