"""User-facing tools: the training chain (train, demo, gpu-check, data prepare; chain.py builds its
stages, pipeline.py runs them, runs.py keeps the run folder), sampling, latent-cache encoding.

Each tool module defines ``add_arguments(parser)`` and ``run(args) -> int`` for `drivesim.cli`.
"""
