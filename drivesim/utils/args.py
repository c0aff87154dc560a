"""Argument types shared by the command-line tools."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def hw_size(flag: str, minimum: int = 1) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type`` for ``HxW`` sizes (``"64x128"`` -> ``(64, 128)``, height x width);
    the error names ``flag`` and the value."""

    def parse(text: str) -> tuple[int, int]:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{flag} must be HxW like 64x128, got {text!r}") from err
        if h < minimum or w < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be at least {minimum}x{minimum}, got {text!r}")
        return h, w

    return parse
