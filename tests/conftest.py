"""pytest set-up; the oracles (PyTorch float64, finite differences) are in oracle.py."""
import os
import tempfile


def pytest_configure(config):
    if os.environ.get("SYMGRAD_TEST_WITHOUT_TORCH"):
        import sys
        sys.modules["torch"] = None    # `import torch` raises ImportError: as if missing
    # the tests get a compile cache of their own, never the user's
    os.environ.setdefault("SYMGRAD_CACHE_DIR", tempfile.mkdtemp(prefix="symgrad-test-cache-"))
