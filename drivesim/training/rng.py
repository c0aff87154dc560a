"""Per-step random streams: training randomness as a pure function of (seed, step, rank).

Lightning does not restore torch's global RNG on resume, so modules draw their training
noise (diffusion t and epsilon, guidance dropout, context counts, posterior samples) from
``step_generator(seed, global_step, rank)``. A resumed run then draws exactly what an
uninterrupted run would have drawn at the same step, and ranks draw different noise.
"""

from __future__ import annotations

import numpy as np
import torch


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded from SeedSequence([seed, step, rank]) (well-mixed 64-bit seed);
    callers move the numbers to their device, so the stream is the same on CPU and GPU."""
    words = np.random.SeedSequence([int(seed), int(step), int(rank)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))
