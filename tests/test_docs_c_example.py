"""docs/cli.md's C example: exported, compiled, linked and run as the page shows."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from symgrad.runtime.cli import main as cli

PAGE = Path(__file__).resolve().parents[1] / "docs" / "src" / "cli.md"


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_the_c_example_links_and_prints_the_documented_numbers(tmp_path, monkeypatch, capsys):
    text = PAGE.read_text()
    program = re.search(r"```c\n(.*?)```", text, re.S).group(1)
    console = re.search(r"```console\n(\$ symgrad compile .*?--name zfn\n)"
                        r"(\$ cc .*?\n)(.*?)```", text, re.S)
    export, link, expected = console.group(1), console.group(2), console.group(3)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CC", raising=False)
    (tmp_path / "main.c").write_text(program)
    argv = re.findall(r'"[^"]*"|\S+', export[2:].strip())[1:]
    assert cli([a.strip('"') for a in argv]) == 0, capsys.readouterr().err
    done = subprocess.run(link[2:].strip(), shell=True, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
    x, y = np.array([0.1, 0.5, 2.0]), np.array([5.0, 1.0, 7.0])
    printed = np.array([[float(v) for v in line.split()] for line in done.stdout.splitlines()])
    np.testing.assert_allclose(printed, np.stack([np.sin(x) * y, np.cos(x) * y, np.sin(x)], 1),
                               atol=1e-6)
