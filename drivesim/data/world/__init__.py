"""The synthetic driving world: drivesim's embedded default dataset and test oracle.

```python
from drivesim.data.world import WorldConfig, DrivingWorld
world = DrivingWorld(WorldConfig(seed=0, height=128, width=256, fps=10.0, night=False,
                                 num_vehicles=6, weather="clear"))
frame = world.step()              # advance by 1/fps and render
frame = world.step(render=False)  # boxes without pixels
```
See docs/world.md for what it models and its camera conventions.
"""

from .config import DEFAULT_TRAFFIC_RANGE, WEATHERS, WorldConfig
from .world import DrivingWorld, WorldFrame

__all__ = ["DEFAULT_TRAFFIC_RANGE", "WEATHERS", "DrivingWorld", "WorldConfig", "WorldFrame"]
