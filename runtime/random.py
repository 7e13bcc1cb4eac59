"""Random numbers drawn as PyTorch's CPU generator draws them.

``torch.manual_seed(s)`` followed by ``randn``, ``rand``, ``randint``, ``randperm``,
``normal_`` or ``uniform_`` gives the same numbers here as in PyTorch: to the last bit,
except float32 normals drawn 16 or more at a time, where PyTorch's vectorised Box–Muller
uses its own log/sin/cos polynomials (a few ulps, at most about 1e-5 relative).  So a
program that initialises its model randomly trains to the same values on both.

PyTorch's CPU generator is a 32-bit Mersenne Twister seeded like ``std::mt19937``,
which is numpy's legacy ``RandomState`` seeding; the transforms from raw words to
floats are PyTorch's (``aten/src/ATen/core/DistributionsHelper.h`` and
``native/cpu/DistributionTemplates.h``):

- a float32 uniform is ``(word & (2²⁴−1))·2⁻²⁴``; a float64 uniform takes 53 bits of a
  64-bit draw (two words, the first the high half);
- a tensor of 16 or more floats is filled with uniforms, then Box–Muller'd in blocks of
  16 (``u1 = 1 − d[j]``, ``u2 = d[j+8]``), the last block redrawn when the size is not a
  multiple of 16; fewer than 16 are drawn one at a time in float64, each pair's second
  value kept for the next draw.
"""
from __future__ import annotations

import math
import threading

import numpy as np

_MASK24, _MASK53 = (1 << 24) - 1, (1 << 53) - 1


class Generator:
    """``torch.Generator``: a seeded stream; ``manual_seed`` restarts it."""

    def __init__(self, device="cpu"):
        self._lock = threading.Lock()
        self.manual_seed(67280421310721)        # PyTorch's default CPU seed

    def manual_seed(self, seed):
        seed = int(seed)
        self._seed = seed
        self._state = np.random.RandomState(seed & 0xFFFFFFFF)
        self._normal = None          # the cached second value of a float64 Box–Muller pair
        return self

    def seed(self):
        import os
        return self.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)._seed

    def initial_seed(self):
        return self._seed

    def get_state(self):
        return self._state.get_state(), self._normal

    def set_state(self, state):
        self._state.set_state(state[0])
        self._normal = state[1]

    # ---- raw words -----------------------------------------------------------------------
    def words(self, n: int) -> np.ndarray:
        """``n`` 32-bit words of the Mersenne Twister, as uint64."""
        return self._state.randint(0, 1 << 32, size=n, dtype=np.uint64) if n else \
            np.zeros(0, np.uint64)

    def words64(self, n: int) -> np.ndarray:
        w = self.words(2 * n).reshape(n, 2)
        return (w[:, 0] << np.uint64(32)) | w[:, 1]

    # ---- distributions ---------------------------------------------------------------------
    def uniform(self, n: int, dtype, low=0.0, high=1.0) -> np.ndarray:
        dtype = np.dtype(dtype)
        if dtype == np.float64:
            x = (self.words64(n) & np.uint64(_MASK53)).astype(np.float64) * 2.0 ** -53
            return x * (high - low) + low
        # PyTorch: from/to are floats, the draw and the affine map run in double (its
        # CPU accumulate type for float), rounded to float at the end
        x = (self.words(n) & np.uint64(_MASK24)).astype(np.float64) * 2.0 ** -24
        low32 = np.float32(low)
        span = np.float64(np.float32(high) - low32)
        return (x * span + np.float64(low32)).astype(dtype)

    def normal(self, n: int, dtype, mean=0.0, std=1.0) -> np.ndarray:
        dtype = np.dtype(dtype)
        if n >= 16:
            return self._normal_fill(n, dtype, mean, std)
        out = np.empty(n, np.float64)
        for k in range(n):
            out[k] = self._one_normal() * std + mean
        return out.astype(dtype)

    def _one_normal(self) -> float:
        if self._normal is not None:
            value, self._normal = self._normal, None
            return value
        u1, u2 = self.uniform(2, np.float64)
        r = math.sqrt(-2.0 * math.log1p(-u2))
        theta = 2.0 * math.pi * u1
        self._normal = r * math.sin(theta)
        return r * math.cos(theta)

    def _normal_fill(self, n, dtype, mean, std):
        t = np.float64 if dtype == np.float64 else np.float32
        data = self.uniform(n, t)
        blocks = n // 16
        head = data[:blocks * 16].reshape(blocks, 2, 8)
        _box_muller(head, t, mean, std)
        data[:blocks * 16] = head.reshape(-1)
        if n % 16:
            tail = self.uniform(16, t).reshape(1, 2, 8)
            _box_muller(tail, t, mean, std)
            data[n - 16:] = tail.reshape(-1)
        return data.astype(dtype)

    def integers(self, low: int, high: int, n: int) -> np.ndarray:
        """``randint``: ``low + word % (high − low)`` (64-bit words for huge ranges)."""
        span = high - low
        if span <= 0:
            raise RuntimeError(f"random_ expects 'from' to be less than 'to', but got "
                               f"from={low} >= to={high}")
        words = self.words(n) if span < (1 << 32) else self.words64(n)
        return (words % np.uint64(span)).astype(np.int64) + low

    def permutation(self, n: int) -> np.ndarray:
        """``randperm``: Fisher–Yates as PyTorch's CPU kernel runs it."""
        r = np.arange(n, dtype=np.int64)
        if n < 2:
            return r
        words = self.words(n - 1)
        for i in range(n - 1):
            z = int(words[i] % np.uint64(n - i))
            r[i], r[i + z] = r[i + z], r[i]
        return r


def _box_muller(blocks, t, mean, std):
    u1 = t(1) - blocks[:, 0, :]
    u2 = blocks[:, 1, :]
    with np.errstate(divide="ignore"):
        radius = np.sqrt(t(-2) * np.log(u1))
    theta = (2.0 * math.pi * u2.astype(np.float64)).astype(t)
    cos, sin = np.cos(theta), np.sin(theta)
    blocks[:, 0, :] = radius * cos * t(std) + t(mean)
    blocks[:, 1, :] = radius * sin * t(std) + t(mean)


default_generator = Generator()


def manual_seed(seed) -> Generator:
    """``torch.manual_seed``: restart the default generator (the one every draw uses unless
    given ``generator=``)."""
    return default_generator.manual_seed(seed)


def initial_seed() -> int:
    return default_generator.initial_seed()


def seed() -> int:
    return default_generator.seed()


def get_rng_state():
    return default_generator.get_state()


def set_rng_state(state):
    default_generator.set_state(state)


def generator(g) -> Generator:
    from .tensor import _mode
    if _mode.trace is not None:
        from .trace import TraceError, _user_line
        raise TraceError(f"compile: {_user_line()} draws random numbers; a compiled step "
                         "would replay the same ones every call. Draw them outside the "
                         "compiled function and pass them as arguments")
    if g is None:
        return default_generator
    if not isinstance(g, Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(g).__name__}")
    return g
