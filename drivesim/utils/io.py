"""Atomic file output and the project's input-error type.

Every writer in drivesim goes through these helpers so that an interrupted run never
leaves a half-written file under the final name, and nothing is overwritten silently.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DriveSimInputError(ValueError):
    """A bad input: the message names the file, the field and the offending value."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 field: str | None = None, value: Any = None) -> None:
        parts = []
        if path is not None:
            parts.append(f"{path}")
        if field is not None:
            parts.append(f"field '{field}'")
        if value is not None:
            text = repr(value)
            parts.append(f"value {text[:200]}")
        prefix = ": ".join([", ".join(parts)]) if parts else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.message = message  # without the file / field / value prefix
        self.path = path
        self.field = field
        self.value = value


def input_error_in(err: BaseException) -> DriveSimInputError | None:
    """The first ``DriveSimInputError`` in ``err`` or its cause / context chain (libraries such
    as jsonargparse wrap the one a constructor raised in their own exception)."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DriveSimInputError):
            return e
        todo += [e.__cause__, e.__context__]
    return None


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    With ``overwrite=False`` an existing ``path`` raises ``FileExistsError`` before any work.
    The temporary keeps the final suffix so that writers choosing a format by extension
    (PyAV, OpenCV) behave the same.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final} exists; pass --overwrite to replace it")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}",
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; finished files get normal modes
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> None:
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", overwrite=overwrite)


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, turning a parse error into a DriveSimInputError naming file, line and column."""
    p = Path(path)
    if not p.is_file():
        raise DriveSimInputError("file not found", path=p)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DriveSimInputError(f"malformed JSON at line {err.lineno} column {err.colno}: {err.msg}",
                                 path=p) from err
    except UnicodeDecodeError as err:
        raise DriveSimInputError(f"not UTF-8 text: {err}", path=p) from err
