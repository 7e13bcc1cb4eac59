"""dtypes and PyTorch's type promotion (``torch.result_type``).

The runtime's dtypes are numpy dtypes under PyTorch's names.  Promotion is PyTorch's,
not numpy's: an operand's *category* (bool < integer < floating) decides first; within
the winning category, tensors with dimensions outrank 0-d tensors, which outrank Python
numbers; a Python float alone promotes an integer tensor to the default float32.  So
``float32 ** int64`` stays float32 (numpy says float64) and ``int64 + 2.5`` is float32.
"""
from __future__ import annotations

import numbers

import numpy as np

float16, float32, float64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)
uint8, int8, int16 = np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int16)
int32, int64, bool_ = np.dtype(np.int32), np.dtype(np.int64), np.dtype(np.bool_)

# PyTorch's names for them (torch.long, torch.double, …)
NAMES = {"float16": float16, "half": float16, "float32": float32, "float": float32,
         "float64": float64, "double": float64, "uint8": uint8, "int8": int8,
         "int16": int16, "short": int16, "int32": int32, "int": int32, "int64": int64,
         "long": int64, "bool": bool_}
DTYPES = frozenset(NAMES.values())
# PyTorch's tensor-type words: torch.FloatTensor, "result type Float", …
TYPE_NAMES = {float16: "Half", float32: "Float", float64: "Double", uint8: "Byte",
              int8: "Char", int16: "Short", int32: "Int", int64: "Long", bool_: "Bool"}


def as_dtype(dtype) -> np.dtype:
    """A runtime dtype from ``torch.float64``-style names, numpy dtypes or Python types."""
    if dtype is float:
        return float32      # PyTorch's default dtype
    if dtype is int:
        return int64
    if dtype is bool:
        return bool_
    try:
        d = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{dtype!r} is not a dtype; use torch.float32, torch.float64, "
                        "torch.int64 (torch.long) or torch.bool") from None
    if d not in DTYPES:
        raise TypeError(f"dtype {d} is not supported: the runtime has "
                        f"{', '.join(sorted({str(v) for v in DTYPES}))}")
    return d


_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2}


def result_type(*operands) -> np.dtype:
    """PyTorch's ``torch.result_type`` of tensors (anything with ``_data``) and numbers."""
    if len(operands) == 2:          # the common cases of every recorded binary operation
        a, b = operands
        da = getattr(a, "_data", None)
        if da is not None and da.dtype.kind == "f":
            if type(b) is float or type(b) is int:
                return da.dtype
            db = getattr(b, "_data", None)
            if db is not None and db.dtype == da.dtype:
                return da.dtype
    best = (-1, -1)        # (category, priority)
    dtypes = []
    for x in operands:
        if hasattr(x, "_data"):
            d = x._data.dtype
            rank = (_CATEGORY[d.kind], 2 if x._data.ndim else 1)
        elif isinstance(x, (bool, np.bool_)):
            d, rank = bool_, (0, 0)
        elif isinstance(x, numbers.Integral):
            d, rank = int64, (1, 0)
        elif isinstance(x, numbers.Real):
            d, rank = float32, (2, 0)
        else:
            raise TypeError(f"result_type: unsupported operand {type(x).__name__}")
        if rank > best:
            best, dtypes = rank, [d]
        elif rank == best:
            dtypes.append(d)
    if best[1] == 0 and best[0] == 2:
        return float32      # a Python float wins its category: the default dtype
    return np.result_type(*dtypes) if len(dtypes) > 1 else dtypes[0]


def promote_types(a, b) -> np.dtype:
    return np.promote_types(as_dtype(a), as_dtype(b))


def is_floating_point(dtype) -> bool:
    return np.dtype(dtype).kind == "f"
