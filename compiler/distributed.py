"""Compiled functions over Dask arrays: chunk by chunk, on one machine or a cluster.

symgrad does not schedule work across processes; Dask does.  ``map_blocks(f, *args)``
describes the evaluation of ``vmap(f)`` on every chunk of the batched arguments as a
Dask graph: each task runs one chunk as one native call (the batch loop in compiled code,
the GIL released).  With ``seed=`` it evaluates the VJP too; gradients of inputs shared by
every element (model parameters, ``in_axes=None``) are summed over the batch by Dask's
tree reduction, so a gradient over data larger than any worker's memory is one
``compute()``.

A compiled function pickles as its graph and options (``CompiledFunction.__reduce__``);
each worker process compiles it once, or loads the object code from its disk cache, and
keeps it for every later task (``pipeline.rebuild``).  Dask is an optional extra:
``pip install 'symgrad[dask]'``.
"""
from __future__ import annotations

import numpy as np

from .backend.batch import Batched


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError:
        raise ImportError("map_blocks needs Dask: pip install 'symgrad[dask]' (dask[array] "
                          "and, for clusters, dask[distributed])") from None
    return dask, da


def map_blocks(f, *args, in_axes=0, seed=None):
    """``f`` (a compiled function) over the leading axis of Dask arrays, chunk by chunk.

    ``args``: one per input of ``f``.  Batched inputs are Dask arrays (or numpy arrays,
    chunked like the first Dask array) whose leading axis is the batch; inputs with
    ``in_axes`` None are shared by every element (numbers or numpy arrays of the input's
    shape).  Returns the outputs as Dask arrays of shape ``(batch,) + output shape`` (one
    array, or a tuple for several outputs); with ``seed`` (one per output, of the
    output's shape: the same for every element, or a Dask array with the batch axis),
    ``(outputs, gradients)``: a gradient per ``wrt`` node, batched for batched inputs and
    summed over the whole batch for shared ones.  Nothing runs until ``compute()``."""
    dask, da = _dask()
    n = len(f.inputs)
    if len(args) != n:
        raise TypeError(f"map_blocks: {n} inputs ({', '.join(nm for nm, _, _ in f.inputs)}), "
                        f"got {len(args)} arguments")
    axes = [in_axes] * n if in_axes is None or isinstance(in_axes, int) else list(in_axes)
    if len(axes) != n or any(a not in (0, None) for a in axes):
        raise ValueError("map_blocks: in_axes is 0 (the leading axis is the batch) or None "
                         "(shared), for all inputs or one per input")
    batched = [k for k, a in enumerate(axes) if a == 0]
    if not batched:
        raise ValueError("map_blocks needs at least one batched input (in_axes all None)")
    first = next((args[k] for k in batched if isinstance(args[k], da.Array)), None)
    if first is None:
        raise TypeError("map_blocks: give the batched inputs as Dask arrays (dask.array."
                        "from_array(x, chunks=...) for a numpy array)")
    rows = first.chunks[0]
    blocks = {k: _rows(da, args[k], rows, f.inputs[k][0]) for k in batched}
    seed = f._flat("outputs", seed)
    seeds = _seed_blocks(da, f, seed, rows) if seed is not None else None
    fn = dask.delayed(f, pure=True)
    outputs = [(s, d) for _, s, d in f.outputs]
    shared_wrt = {k for k, (name, _, _) in enumerate(f.wrt)
                  if name in f._names and axes[f._names[name]] is None}
    per_block = []
    for b, count in enumerate(rows):
        call = [blocks[k][b] if k in blocks else args[k] for k in range(n)]
        block_seed = None if seeds is None else \
            [s[b] if isinstance(s, list) else s for s in seeds]
        per_block.append((dask.delayed(_run_block, pure=True, nout=2)(
            fn, axes, call, block_seed, sorted(shared_wrt)), count))
    values = [_stack(da, [(d[0], c) for d, c in per_block], k, shape, dtype)
              for k, (shape, dtype) in enumerate(outputs)]
    values = f._shaped("outputs", values[0] if len(values) == 1 else tuple(values))
    if seeds is None:
        return values
    grads = []
    for k, (_, shape, dtype) in enumerate(f.wrt):
        if k in shared_wrt:     # summed per chunk, then over chunks by a tree reduction
            parts = [da.from_delayed(d[1][k], shape=tuple(shape), dtype=dtype)
                     for d, _ in per_block]
            grads.append(da.stack(parts).sum(axis=0, split_every=8))
        else:
            grads.append(_stack(da, [(d[1], c) for d, c in per_block], k, shape, dtype))
    return values, f._shaped("wrt", tuple(grads))


def _rows(da, x, rows, name):
    """The batched argument ``x`` as one delayed block per chunk of rows."""
    if not isinstance(x, da.Array):
        x = da.from_array(np.asarray(x), chunks=(rows,) + tuple(-1 for _ in np.shape(x)[1:]))
    if x.shape[0] != sum(rows):
        raise ValueError(f"map_blocks: {name} has {x.shape[0]} elements along its batch axis, "
                         f"the first batched input {sum(rows)}")
    x = x.rechunk((rows,) + tuple(-1 for _ in x.shape[1:]))   # whole elements per chunk
    return [b for b in x.to_delayed().reshape(-1)]


def _seed_blocks(da, f, seed, rows):
    seeds = [seed] if len(f.outputs) == 1 else list(seed)
    if len(seeds) != len(f.outputs):
        raise TypeError(f"map_blocks: {len(f.outputs)} outputs but {len(seeds)} seeds")
    out = []
    for s, (name, shape, _) in zip(seeds, f.outputs):
        if isinstance(s, da.Array):
            out.append(_rows(da, s, rows, f"the seed of {name}"))
        elif np.shape(s) == tuple(shape):
            out.append(np.asarray(s))
        else:
            raise ValueError(f"map_blocks: the seed of {name} has shape {np.shape(s)}; give "
                             f"{tuple(shape)} (the same for every element) or a Dask array "
                             "with the batch axis first")
    return out


def _stack(da, parts, k, shape, dtype):
    return da.concatenate([da.from_delayed(p[k], shape=(count,) + tuple(shape), dtype=dtype)
                           for p, count in parts], axis=0)


def _run_block(f, axes, args, seed, shared):
    """One chunk (in a worker): the batched call, shared gradients summed over it."""
    batched = Batched(f, axes, shaped=False)
    if seed is None:
        values = batched(*args)
        return (list(values) if isinstance(values, tuple) else [values]), []
    values, grads = batched.vjp(*args, seed=seed if len(seed) > 1 else seed[0])
    values = list(values) if isinstance(values, tuple) else [values]
    grads = [np.asarray(g).sum(axis=0) if k in shared else g for k, g in enumerate(grads)]
    return values, grads
