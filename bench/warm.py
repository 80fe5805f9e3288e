"""Memory warm-up before a timed command, for this VM (imported by the bench scripts).

The 2-core machine these benchmarks run on is a virtual machine whose host backs guest
memory lazily and takes freed memory back within seconds. Measured with a fresh process
touching 2 GB of new memory: 7-10 GB/s right after another process freed that much, 0.12-
0.15 GB/s after 10 s idle, 60x slower. A command that allocates 1 GB (an audit's held-out
index, a build's shards, the page cache a copy fills) then spends 7 s on the host, not on
its own work, and by chance: earlier figures moved 2x between rounds for this reason. On a
machine with its own memory a first touch costs the kernel's zeroing only, the fast case.

So a benchmark touches and frees `gb` of memory in a throwaway process right before each
timed command: the command finds backed pages, as it would on such a machine. `--no-warm`
in each script measures the VM as it is.
"""

from __future__ import annotations

import subprocess
import sys

WARM_GB = 4.0


def warm(gb: float = WARM_GB) -> None:
    """Touch and free `gb` of memory in a child process (~0.5 s when already backed)."""
    subprocess.run([sys.executable, "-c", f"import numpy as np; np.ones({int(gb * 1e9) // 8}).sum()"], check=True)
