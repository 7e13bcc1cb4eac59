"""Feedback while a long compile runs: on a terminal, a line rewritten in place; on a
pipe, nothing unless asked (SYMGRAD_PROGRESS=1), and nothing on a terminal with 0."""
import os
import pty
import subprocess
import sys

import pytest

# long enough to pass the threshold set below (0.05 s), with the cache off
PROGRAM = """
import numpy as np, symgrad.compiler as C
g = C.Graph(); h0 = g.input("h", (50,)); h = h0
for _ in range(150):
    h = C.sin(h) * 1.0001 + 0.1 * h * h
print(g.compile(h.sum(), wrt=[h0]).vjp(np.zeros(50))[0])
"""


def _env(**extra):
    env = dict(os.environ, SYMGRAD_CACHE="0", SYMGRAD_PROGRESS_AFTER="0.05")
    env.pop("SYMGRAD_PROGRESS", None)
    env.update(extra)
    return env


def test_a_pipe_gets_nothing_unless_asked_then_a_line_per_stage():
    quiet = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                           env=_env(), timeout=300)
    assert quiet.returncode == 0 and quiet.stdout == "0.0\n" and quiet.stderr == ""
    logged = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            env=_env(SYMGRAD_PROGRESS="1"), timeout=300)
    assert logged.returncode == 0 and logged.stdout == "0.0\n"
    lines = logged.stderr.splitlines()
    assert any(" nodes — LLVM — " in line for line in lines), lines
    assert lines[-1].startswith("symgrad: compiled ") and "\r" not in logged.stderr
    assert len(lines) == len(set(lines))           # one line per stage, not per tick


@pytest.mark.parametrize("setting, shown", [(None, True), ("0", False)])
def test_a_terminal_gets_one_line_rewritten_in_place(setting, shown):
    leader, follower = pty.openpty()
    env = _env() if setting is None else _env(SYMGRAD_PROGRESS=setting)
    done = subprocess.run([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE,
                          stderr=follower, env=env, timeout=300)
    os.close(follower)
    written = b""
    try:
        while chunk := os.read(leader, 4096):
            written += chunk
    except OSError:          # the terminal's other end is closed: all was read
        pass
    os.close(leader)
    assert done.returncode == 0 and done.stdout == b"0.0\n"
    text = written.decode()
    if shown:
        assert text.startswith("\rsymgrad: compiling ") and "compiled " in text
        assert text.endswith("\n") and text.count("\n") <= 2   # one line, then the summary
    else:
        assert text == ""
