"""torch.save / torch.load for tensors, state dicts and plain containers of them.

The file is a numpy ``.npz`` archive: arrays, and a JSON description of the container
(dicts, lists, tuples, numbers, strings, None). Nothing is pickled, so loading a file
never runs code from it.
"""
from __future__ import annotations

import io
import json
import numbers
import os
import zipfile
from collections import OrderedDict

import numpy as np

from .tensor import Tensor


def _encode(obj, arrays):
    if isinstance(obj, Tensor):
        arrays.append(np.ascontiguousarray(obj._data))
        return {"tensor": len(arrays) - 1, "requires_grad": bool(obj.requires_grad)}
    if isinstance(obj, np.ndarray):
        arrays.append(obj)
        return {"ndarray": len(arrays) - 1}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError("torch.save: dict keys must be strings or ints")
        return {"dict": [[k, _encode(v, arrays)] for k, v in obj.items()],
                "ordered": isinstance(obj, OrderedDict)}
    if isinstance(obj, (list, tuple)):
        return {"list" if isinstance(obj, list) else "tuple": [_encode(v, arrays) for v in obj]}
    if obj is None or isinstance(obj, (bool, str)):
        return {"value": obj}
    if isinstance(obj, numbers.Integral):
        return {"value": int(obj)}
    if isinstance(obj, numbers.Real):
        return {"float": repr(float(obj))}
    raise TypeError(f"torch.save: cannot save a {type(obj).__name__}: symgrad saves tensors, "
                    "arrays, numbers, strings and dicts/lists of them (no pickled objects); "
                    "save model.state_dict(), not the model")


def _decode(d, arrays):
    if "tensor" in d:
        t = Tensor(np.array(arrays[f"a{d['tensor']}"]))
        t.requires_grad = d["requires_grad"]
        return t
    if "ndarray" in d:
        return np.array(arrays[f"a{d['ndarray']}"])
    if "dict" in d:
        items = [(k, _decode(v, arrays)) for k, v in d["dict"]]
        return OrderedDict(items) if d.get("ordered") else dict(items)
    if "list" in d:
        return [_decode(v, arrays) for v in d["list"]]
    if "tuple" in d:
        return tuple(_decode(v, arrays) for v in d["tuple"])
    if "float" in d:
        return float(d["float"])
    return d["value"]


def save(obj, f):
    """Save ``obj`` to a path or a binary file object."""
    arrays = []
    layout = _encode(obj, arrays)
    buf = io.BytesIO()
    np.savez(buf, __layout__=np.frombuffer(json.dumps(layout).encode(), np.uint8),
             **{f"a{k}": a for k, a in enumerate(arrays)})
    data = buf.getvalue()
    if isinstance(f, (str, os.PathLike)):
        with open(f, "wb") as fh:
            fh.write(data)
    else:
        f.write(data)


def load(f, map_location=None, weights_only=None, **kwargs):
    """Load what ``save`` wrote. ``map_location`` may name the CPU."""
    if map_location is not None:
        from .device import check_device
        if not callable(map_location) and not isinstance(map_location, dict):
            check_device(map_location)
    try:
        with np.load(f, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise RuntimeError(f"torch.load: not a file written by symgrad's torch.save ({err}); "
                           "files written by PyTorch itself are pickles, which symgrad does "
                           "not read") from None
    layout = json.loads(arrays.pop("__layout__").tobytes().decode())
    return _decode(layout, arrays)
