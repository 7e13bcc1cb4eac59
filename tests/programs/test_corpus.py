"""The corpus harness on this project's own programs in ``own/`` (each run on PyTorch
and on symgrad, unchanged but for the import).  The published programs of the hand-run
campaign are listed in SOURCES.md; their code is not kept here."""
from pathlib import Path

import pytest

from tests.programs.corpus import check, compare, swap_imports

pytest.importorskip("torch")
OWN = sorted((Path(__file__).parent / "own").glob("*.py"))


@pytest.mark.parametrize("path", OWN, ids=lambda p: p.stem)
def test_program_agrees_with_pytorch(path):
    agrees, detail = check(path)
    assert agrees, detail


def test_only_the_imports_change():
    source = ("import torch\nimport torch.nn as nn\nfrom torch.utils.data import DataLoader\n"
              "x = torch.ones(2)  # import torch stays a comment\n")
    swapped = swap_imports(source)
    assert swapped.splitlines() == [
        "import symgrad.runtime as torch", "import symgrad.runtime.nn as nn",
        "from symgrad.runtime.utils.data import DataLoader",
        "x = torch.ones(2)  # import torch stays a comment"]


def test_compare_catches_a_wrong_number_and_ignores_addresses():
    expected = "step 1 loss 0.5\n<MulBackward0 object at 0x7f01>\n"
    again = "step 1 loss 0.5\n<MulBackward0 object at 0x7f99>\n"
    assert compare(expected, again, "step 1 loss 0.5\n<MulBackward0 object at 0x1>\n",
                   1e-10) is None
    assert compare(expected, again, "step 1 loss 0.5001\n<x>\n", 1e-10) is not None
    assert compare(expected, again, "step 1 loss 0.5\n", 1e-10) is not None
