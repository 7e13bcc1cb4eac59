"""A numpy interpreter for graphs: the reference the compiled code is checked against."""
from __future__ import annotations

import numpy as np

from . import ops
from .graph import Expr, GraphError, ancestors


def evaluate(g, outputs, inputs: dict):
    """Values of ``outputs`` given ``inputs`` (by name or Expr); one pass, in id order."""
    single = isinstance(outputs, Expr)
    outputs = [outputs] if single else list(outputs)
    given = {}
    for key, value in inputs.items():
        node = g.node(key) if isinstance(key, str) else key
        given[node.id] = np.asarray(value, dtype=node.dtype)
    need = ancestors(g, [o.id for o in outputs])
    values = {}
    for i in sorted(need):
        attrs = g.attrs[i]
        if attrs["op"] == "input":
            if i not in given:
                raise GraphError(f"no value given for input {Expr(g, i).name}")
            values[i] = np.broadcast_to(given[i], attrs["shape"])
            continue
        args = [values[a] for a in attrs["args"]]
        if attrs["op"] == "broadcast":
            values[i] = np.broadcast_to(args[0], attrs["shape"])
        else:
            values[i] = ops.evaluate(attrs["op"], args, attrs["params"], attrs["shape"],
                                     attrs["dtype"])
    result = [np.array(values[o.id]) for o in outputs]
    return result[0] if single else result
