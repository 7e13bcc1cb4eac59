"""The on-disk compile cache: native objects keyed by what they were compiled from.

An entry holds machine code that this process will run, so it is trusted exactly as
far as the directory is: the directory is created private to the user (0700), and an
entry that is not owned by the user, is writable by others, is truncated, fails its
checksum or was written by another symgrad/LLVM/CPU is ignored (reported once) and
rebuilt.  Writers write a temporary file and rename it, so two processes writing the
same entry leave one valid entry.  An unusable directory means a memory-only cache,
with a warning.

``SYMGRAD_CACHE_DIR`` sets the directory (default ``$XDG_CACHE_HOME/symgrad`` or
``~/.cache/symgrad``); ``SYMGRAD_CACHE=0`` turns the disk cache off.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import threading
import warnings

from .stats import stats

MAGIC = b"SYMGRAD-OBJECT-1\n"
MAX_ENTRY_BYTES = 256 << 20     # far above any object symgrad writes
_warned: set = set()
_lock = threading.Lock()


class CacheWarning(UserWarning):
    """The disk cache could not be used as is; symgrad went on without that entry."""


def _warn_once(kind: str, message: str):
    with _lock:
        if kind in _warned:
            return
        _warned.add(kind)
    warnings.warn(message, CacheWarning, stacklevel=3)


def directory() -> str | None:
    """The cache directory, created private to the user; None when the disk cache is off
    or unusable."""
    if os.environ.get("SYMGRAD_CACHE", "1") == "0":
        return None
    path = os.environ.get("SYMGRAD_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "symgrad")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.stat(path)
        if info.st_uid != os.getuid():
            _warn_once("owner", f"compile cache {path} belongs to another user: not used "
                                "(set SYMGRAD_CACHE_DIR to a directory of your own)")
            return None
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            _warn_once("mode", f"compile cache {path} is writable by other users: not used "
                               f"(chmod 700 {path})")
            return None
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(path)
    except OSError as err:
        _warn_once("unwritable", f"compile cache directory unusable ({err}); compiled code "
                                 "is cached in memory only")
        return None
    return path


def _path(key: str, meta: dict) -> str | None:
    """One file per key and environment (versions, CPU), so several environments can
    share a directory without replacing each other's entries."""
    base = directory()
    if base is None:
        return None
    env = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(base, f"{key}-{env}.o")


_offered: dict = {}          # key -> an entry another process sent (see ``offer``)
_OFFERED_MAX = 256


def pack(meta: dict, obj: bytes) -> bytes:
    """An entry as stored: magic, checksum, header (what the code depends on), object."""
    payload = json.dumps(meta, sort_keys=True).encode() + b"\n" + obj
    return MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def offer(key: str, data: bytes) -> None:
    """An entry that came with a pickled compiled function: ``load`` checks it like a
    file of the cache (checksum; versions, build and CPU equal to this process's) before
    using it, and otherwise ignores it (the code is compiled here)."""
    if isinstance(key, str) and isinstance(data, bytes) and len(data) <= MAX_ENTRY_BYTES:
        _offered[key] = data
        while len(_offered) > _OFFERED_MAX:
            _offered.pop(next(iter(_offered)))


def load(key: str, expect: dict, peek: bool = False) -> bytes | None:
    """The object for ``key``, or None (missing, or rejected with a warning).  ``peek``:
    read the disk entry only (to ship it), neither counted nor taking an offered one."""
    sent = None if peek else _offered.pop(key, None)
    if sent is not None:
        reason, obj = _parse(sent, expect)
        if reason is None:
            stats.shipped_hits += 1
            store(key, expect, obj)          # for this machine's later processes
            return obj
        _warn_once(f"sent:{reason}", f"object code sent with a pickled compiled function "
                                     f"was not used: {reason}; it is compiled here")
    path = _path(key, expect)
    if path is None or not os.path.lexists(path):
        return None
    try:
        # no symlinks, no FIFOs or devices (a FIFO would block, /dev/zero never end),
        # and no more than an object can plausibly be
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        if os.path.islink(path):
            _reject(path, "it is a symbolic link")
        return None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        data = b""
        if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_ENTRY_BYTES:
            try:
                data = fh.read(MAX_ENTRY_BYTES + 1)
            except OSError:
                return None
    reason = None
    if not stat.S_ISREG(info.st_mode):
        reason = "it is not a regular file"
    elif len(data) > MAX_ENTRY_BYTES or info.st_size > MAX_ENTRY_BYTES:
        reason = f"it is larger than {MAX_ENTRY_BYTES >> 20} MB"
    elif info.st_uid != os.getuid():
        reason = "it belongs to another user"
    elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        reason = "it is writable by other users"
    else:
        reason, obj = _parse(data, expect)
    if reason:
        _reject(path, reason)
        return None
    if not peek:
        stats.disk_hits += 1
    return obj


def _reject(path, reason):
    stats.disk_rejected += 1
    _warn_once(f"entry:{reason}", f"ignored compile cache entry {path}: {reason}; "
                                  "it is rebuilt")


def _parse(data: bytes, expect: dict):
    if not data.startswith(MAGIC):
        return "not a symgrad cache entry", None
    rest = data[len(MAGIC):]
    digest, _, payload = rest.partition(b"\n")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        return "its checksum does not match (truncated or corrupted)", None
    header, _, obj = payload.partition(b"\n")
    try:
        meta = json.loads(header)
    except ValueError:
        return "its header is unreadable", None
    if meta != expect:
        return "it was written by another symgrad, LLVM or CPU", None
    return None, obj


def store(key: str, meta: dict, obj: bytes) -> None:
    path = _path(key, meta)
    if path is None:
        return
    data = pack(meta, obj)
    try:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".o")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)     # atomic: readers see the old entry or the new one
        except BaseException:
            os.unlink(tmp)
            raise
        stats.disk_writes += 1
    except OSError as err:
        _warn_once("write", f"could not write compile cache entry {path} ({err}); "
                            "continuing without it")
