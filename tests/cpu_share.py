"""How many intra-op threads a test process may use: every core when it runs alone, its share under pytest-xdist.

`pytest -n 2` (opt-in, docs/testing.md) runs two xdist workers on the 2-core CI machine. Two processes with two OpenMP
threads each on two cores spin-wait on each other: a tiny-model generation took 28.7 s instead of 10 s (one thread each)
or 6.1 s (one process alone with two). So each worker, and every server or CLI subprocess it starts (through
OMP_NUM_THREADS, which they inherit), keeps to its share of the cores.
"""

from __future__ import annotations

import os


def cpu_share() -> int:
    """Cores divided by the xdist workers sharing them (at least 1)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, len(os.sched_getaffinity(0)) // workers)
