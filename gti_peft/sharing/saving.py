"""Writing adapter folders atomically: a crash or a second writer never leaves a half-written mix."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .adapter_format import ADAPTER_FILES


def write_folder_atomically(folder: str | Path, write: Callable[[Path], None], overwrite: bool = True) -> Path:
    """Call `write(tmp)` on a fresh temporary folder beside `folder`, then move it into place.

    A folder that exists and holds something other than an adapter is refused unless `overwrite`.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        is_adapter = all((folder / name).exists() for name in ADAPTER_FILES)
        if not is_adapter and not overwrite:
            raise FileExistsError(
                f"{str(folder)!r} exists and is not an adapter folder: choose another folder or remove it."
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-{os.getpid()}-"))
    try:
        write(tmp)
        _plain_permissions(tmp)
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary folders a killed writer of `folder` left beside it (`.<name>.tmp-<pid>-*`,
    `.<name>.old-<pid>`), where that process no longer runs; a live writer's are kept. Returns what was removed."""
    removed = []
    for path in folder.parent.glob(f".{folder.name}.*-*"):
        kind, _, rest = path.name[len(folder.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _plain_permissions(folder: Path) -> None:
    """mkdtemp makes the folder private (0700) and safetensors writes 0600 files: give them the usual umask
    permissions, so a shared adapter folder is readable like any other."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
