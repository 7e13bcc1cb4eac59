"""symgrad.runtime: JIT engine, compiled functions (the PyTorch-style API comes later)."""
