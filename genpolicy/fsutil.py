"""Crash-safe directory writes: build beside the target, fsync, then swap in with rollback."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path


def fsync_tree(path: Path) -> None:
    """Flush every file and directory under `path` to disk (so a rename never exposes empty files)."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory src to dst. An existing dst is set aside and deleted only after the move succeeded;
    if the move fails, the old dst is put back."""
    fsync_tree(src)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(old, dst)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
