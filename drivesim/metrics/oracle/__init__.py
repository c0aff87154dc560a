"""Oracle metrics on the synthetic world: box fidelity, day/night accuracy, temporal consistency.

The synthetic world knows the truth (boxes, lighting), so a small model trained on its
renders can score what FVD cannot: whether generated videos follow their conditioning.
"""

from drivesim.metrics.oracle.model import Oracle, OracleConfig, load_or_train_oracle, train_oracle
from drivesim.metrics.oracle.scores import (
    BoxFidelity,
    box_fidelity_frame,
    boxes_to_mask,
    frame_differences,
    wasserstein_1d,
)

__all__ = ["BoxFidelity", "Oracle", "OracleConfig", "box_fidelity_frame", "boxes_to_mask",
           "frame_differences", "load_or_train_oracle", "train_oracle", "wasserstein_1d"]
