"""Write outputs so that a killed or failed job never leaves a file a later run would trust.

Everything is written under a temporary name next to the target and renamed into place only
when complete; ``os.replace`` is atomic on one file system. A process killed outright (SIGKILL,
out of memory) cannot remove its temporary; ``remove_stale_temporaries`` does so on the next run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from circuitflow.errors import OutputError


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


@contextlib.contextmanager
def atomic_path(target: str | Path, directory: bool = False):
    """Yield a temporary path to write to; move it onto ``target`` only if the block succeeds."""
    target = Path(target)
    prefix = _temporary_prefix(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=target.suffix, dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as e:
        raise OutputError(
            f"{target}: cannot create a file in {target.parent} ({e.strerror or e}); "
            "check that the folder is writable and its file system has space"
        ) from e
    try:
        yield tmp
        # mkstemp/mkdtemp create owner-only files; results are meant to be shared like any other.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod((0o777 if directory else 0o666) & ~umask)
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as e:
        _remove(tmp)
        if _is_no_space(e):
            raise OutputError(
                f"{target}: no space left on the device while it was being written; free space "
                f"on the file system holding {target.parent} and run again"
            ) from e
        raise


def _is_no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # safetensors (the model writer) reports I/O errors only as text, with the system's message.
    return os.strerror(errno.ENOSPC) in str(error)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(targets: Iterable[str | Path]) -> None:
    """Delete what ``atomic_path`` left next to each target when an earlier run was killed.

    Call only before the jobs that write these targets start: a temporary being written now
    looks the same as a stale one.
    """
    for target in map(Path, targets):
        if not target.parent.is_dir():
            continue
        prefix = _temporary_prefix(target)
        for leftover in target.parent.iterdir():
            if leftover.name.startswith(prefix):
                _remove(leftover)


def write_text(text: str, target: str | Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def save_interactive(fig, target: str | Path) -> None:
    """Save a plotly figure as plotly's JSON (``plotly.io.read_json`` reads it back); rule
    interactive_figures draws every one in a page that loads plotly.js once for all of them."""
    write_text(fig.to_json(), target)


def save_figure(fig, target: str | Path, dpi: int = 150) -> None:
    """Save a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(target).suffix.lstrip("."))
    plt.close(fig)
