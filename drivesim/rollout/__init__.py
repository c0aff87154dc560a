"""drivesim.rollout: long scenario-driven rollouts (docs/rollout.md).

scenario (what to show) -> chaining (how many segments) -> engine (the loop, with injected
predict / decode / interpolate callables) -> writer (chunked H.264 + clip.json) and state
(resume); sampler wires the real UNets, cli is `drivesim rollout`.
"""
