"""Process pools for CPU-parallel work (clip export, parallel rollouts)."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor


def spawn_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` *spawned* processes: forking a parent that already runs threads
    (tqdm's monitor, torch's intra-op pool) can deadlock the child or leave it a broken pool."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
