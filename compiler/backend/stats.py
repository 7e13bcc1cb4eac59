"""One counter object for the whole compile path, so a recompilation in a loop is visible.

>>> from symgrad.compiler.backend.stats import stats
>>> sorted(stats.as_dict())[:3]
['backward_cache_hits', 'backward_compiles', 'cache_hits']
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass


@dataclass
class Stats:
    modules_compiled: int = 0     # modules LLVM compiled (kernels and call glue)
    parts_compiled: int = 0       # ... of large programs, the parts LLVM compiled apart
    parts_straight_line: int = 0  # ... of which straight-line scalar code (instcombine only)
    upgrades: int = 0             # straight-line programs recompiled optimised (tier 2)
    compiles: int = 0             # compiled functions' entries built from a graph
    cache_hits: int = 0           # ... of which were served by the in-memory or disk cache
    disk_hits: int = 0
    shipped_hits: int = 0      # object code that came with a pickled function, used
    disk_writes: int = 0
    disk_rejected: int = 0
    backward_compiles: int = 0    # the PyTorch-style runtime's compiled backward graphs
    backward_cache_hits: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


stats = Stats()


def logger(name: str) -> logging.Logger:
    """The library's loggers.  ``SYMGRAD_LOG_COMPILES=1`` shows every compile on stderr: an
    explicit opt-in, so only then does symgrad give its own logger a handler (the root
    logger and the application's handlers are never touched)."""
    log = logging.getLogger(name)
    if os.environ.get("SYMGRAD_LOG_COMPILES") and os.environ["SYMGRAD_LOG_COMPILES"] != "0":
        root = logging.getLogger("symgrad")
        if not root.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            root.addHandler(handler)
            root.setLevel(logging.INFO)
    return log
