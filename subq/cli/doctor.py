"""``subq doctor``: versions and which fast paths this machine can run."""

from __future__ import annotations

import importlib.metadata
import platform

import click
import torch
from rich.console import Console
from rich.table import Table

from subq.layers import get_mixer, list_mixers
from subq.layers.base import triton_available

EPILOG = """
\b
Examples:
  subq doctor               # versions, CUDA, Triton, fast paths per mixer
"""


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@click.command(epilog=EPILOG)
def command():
    """Print torch / Triton / CUDA versions and the forms each mixer would use here."""
    console = Console()
    cuda = torch.cuda.is_available()
    table = Table("component", "value", title="environment")
    rows = [
        ("python", platform.python_version()),
        ("subq", _version("subq")),
        ("torch", torch.__version__),
        ("triton", _version("triton")),
        ("CUDA available", str(cuda)),
        ("CUDA (torch build)", str(torch.version.cuda)),
        ("GPU", torch.cuda.get_device_name(0) if cuda else "-"),
        ("cuDNN", str(torch.backends.cudnn.version()) if cuda else "-"),
        ("FlexAttention", "available" if _flex_available() else "missing"),
        ("CPU threads", str(torch.get_num_threads())),
        ("transformers (\\[hf] extra)", _version("transformers")),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)

    fast = Table("mixer", "forms", "'auto' resolves to", title="fast paths on this machine")
    for name in list_mixers():
        cls = get_mixer(name)
        auto = "triton" if "triton" in cls.modes and triton_available() else "torch"
        fast.add_row(name, ", ".join(cls.modes), auto)
    console.print(fast)
