"""Speed and memory benchmarks: entries declared as data, one runner, one plot.

    subq bench --entries sliding_window --T 4096,16384,65536 --param window=256 --plot bench.png

``registry`` holds :class:`BenchSpec` and :func:`register_bench`; ``entries`` registers the
built-in entries; ``runner`` gates, times and reports; ``plot`` draws time versus T.
"""

from subq.bench import (
    entries,  # noqa: F401  (registers the built-in entries)
    hip_entries,  # noqa: F401  (hip, hip_mask)
    long_conv_entries,  # noqa: F401  (long_conv, hyena)
    monarch_entries,  # noqa: F401  (monarch, monarch_dense)
    ssd_entries,  # noqa: F401  (ssd)
)
from subq.bench.registry import (
    BenchShape,
    BenchSpec,
    get_bench,
    list_benches,
    qkv_inputs,
    qkvo_bytes,
    register_bench,
)
from subq.bench.runner import Timing, check_gate, report, run_bench

__all__ = [
    "BenchShape",
    "BenchSpec",
    "Timing",
    "check_gate",
    "get_bench",
    "list_benches",
    "qkv_inputs",
    "qkvo_bytes",
    "register_bench",
    "report",
    "run_bench",
]
