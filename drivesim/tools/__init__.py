"""User-facing tools: the demo and staged training pipelines, sampling, latent-cache encoding.

Each tool module defines ``add_arguments(parser)`` and ``run(args) -> int`` for `drivesim.cli`.
"""
