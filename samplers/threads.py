"""torch on one CPU thread for a block of work.

Two reasons, both measured here: float sums come out the same on every executor only
with the same thread count (the sweep's local and Ray runs must agree), and on a shared
two-core machine a second OpenMP thread waits on whatever else runs there (guided conv
calls took 10 ms on one thread and 170 ms on two while a test suite ran beside them).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
