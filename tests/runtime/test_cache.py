"""The on-disk compile cache: reuse across processes, and every way an entry can be bad."""
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from symgrad.compiler import Graph, sin
from symgrad.compiler.backend.stats import stats
from symgrad.compiler.backend import cache

PROGRAM = textwrap.dedent("""
    import sys
    from symgrad.compiler import Graph, sin
    from symgrad.compiler.backend.stats import stats
    from symgrad.compiler.backend import cache
    g = Graph()
    x = g.input("x", (5,))
    f = g.compile([(sin(x) * x * {c}).sum()], [x])
    value, (dx,) = f.vjp([0.1, 0.2, 0.3, 0.4, 0.5])
    print(stats.compiles, stats.cache_hits, stats.disk_hits, repr(value))
""")


def run(tmp_path, c=1.5):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", PROGRAM.format(c=c)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    compiles, hits, disk_hits, value = out.stdout.split()
    return int(compiles), int(hits), int(disk_hits), float(value), out.stderr


def entries(tmp_path):
    return sorted(p for p in (tmp_path / "cache").iterdir() if not p.name.startswith("fast-"))


def test_second_process_reuses_the_compiled_code(tmp_path):
    first = run(tmp_path)
    second = run(tmp_path)
    assert first[:3] == (1, 0, 0)
    assert second[:2] == (0, 1) and second[2] >= 1
    assert first[3] == second[3]
    mode = stat.S_IMODE(os.stat(tmp_path / "cache").st_mode)
    assert mode == 0o700


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "garbage"])
def test_bad_entries_are_ignored_reported_and_rebuilt(tmp_path, damage):
    reference = run(tmp_path)[3]
    (entry,) = entries(tmp_path)
    data = entry.read_bytes()
    if damage == "truncate":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        entry.write_bytes(data[:-10] + bytes([data[-10] ^ 0xFF]) + data[-9:])
    elif damage == "foreign":
        os.chown(entry, 65534, 65534)       # "nobody": never load another user's code
    else:
        entry.write_bytes(b"\x7fELF not really")
    compiles, hits, _, value, stderr = run(tmp_path)
    assert compiles == 1 and hits == 0 and value == reference
    assert "CacheWarning" in stderr and "rebuilt" in stderr


@pytest.mark.parametrize("kind", ["fifo", "symlink to /dev/zero", "symlink to an entry",
                                  "oversized"])
def test_entries_that_are_not_plain_files_are_refused(tmp_path, kind):
    # a FIFO would block the compile for ever, /dev/zero never ends; a symlink may point
    # anywhere: never followed
    reference = run(tmp_path)[3]
    (entry,) = entries(tmp_path)
    data = entry.read_bytes()
    entry.unlink()
    if kind == "fifo":
        os.mkfifo(entry, 0o600)
    elif kind == "symlink to /dev/zero":
        os.symlink("/dev/zero", entry)
    elif kind == "symlink to an entry":
        (tmp_path / "elsewhere.o").write_bytes(data)
        os.symlink(tmp_path / "elsewhere.o", entry)
    else:
        with open(entry, "wb") as fh:
            fh.truncate(cache.MAX_ENTRY_BYTES + 1)   # sparse: takes no disk
        os.chmod(entry, 0o600)
    compiles, hits, _, value, stderr = run(tmp_path)
    assert compiles == 1 and hits == 0 and value == reference
    assert "CacheWarning" in stderr, stderr


def test_entries_are_keyed_on_the_compiler_source(tmp_path):
    # two builds with one version string must not share objects: the key holds a hash
    # of the compiler's source files
    from symgrad.compiler.backend import jit
    env = jit.environment()
    assert len(env["build"]) == 16 and env["build"] == jit._source_digest()
    other = dict(env, build="0" * 16)
    assert cache._path("k", env) != cache._path("k", other)


def test_concurrent_writers_leave_one_valid_entry(tmp_path):
    env = dict(os.environ, SYMGRAD_CACHE_DIR=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", PROGRAM.format(c=2.5)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    values = set()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        values.add(out.split()[3])
    assert len(values) == 1
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]
    assert run(tmp_path, c=2.5)[:2] == (0, 1)


def test_unwritable_directory_falls_back_to_memory(tmp_path, monkeypatch):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(blocked / "cache"))
    monkeypatch.setattr(cache, "_warned", set())
    g = Graph()
    x = g.input("x", (3,))
    with pytest.warns(cache.CacheWarning, match="memory only"):
        f = g.compile([(x * 3.25).sum()], [x])
    assert f.vjp([1.0, 2.0, 3.0])[0] == pytest.approx(19.5)


def test_group_writable_directory_is_not_trusted(tmp_path, monkeypatch):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(d))
    monkeypatch.setattr(cache, "_warned", set())
    with pytest.warns(cache.CacheWarning, match="writable by other users"):
        assert cache.directory() is None


def test_same_graph_twice_in_one_process_compiles_once():
    before = stats.compiles
    for _ in range(2):
        g = Graph()
        x = g.input("x", (4,))
        f = g.compile([(sin(x) * 7.125).sum()], [x])
    assert stats.compiles - before <= 1
    np.testing.assert_allclose(f.vjp(np.ones(4))[1][0], 7.125 * np.cos(np.ones(4)))
