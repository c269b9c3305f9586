"""Triton is optional: ``import subq`` and the PyTorch forms work where it is not installed."""

import subprocess
import sys

CODE = """
import sys
sys.modules["triton"] = None  # any `import triton` now raises ImportError
sys.modules["triton.language"] = None
import torch, subq
x = torch.randn(1, 40, 32)
for name in ("attention", "hip", "based", "hyena", "combiner"):
    kwargs = {} if name == "hyena" else {"num_heads": 2}
    mixer = subq.get_mixer(name)(d_model=32, **kwargs)
    assert mixer(x).shape == x.shape, name
print("ok")
"""


def test_import_and_torch_forms_without_triton():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
