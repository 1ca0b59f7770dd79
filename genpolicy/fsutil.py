"""Crash-safe directory writes: build beside the target, fsync, then swap in with rollback."""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

# `.<name>.tmp-<8 hex>` (temp_sibling) and `.<name>.old-<8 hex>` (replace_dir's set-aside copy): only a save in
# progress owns one, so at the start of a run any that exist were left by a killed process.
_TEMP_NAME = re.compile(r"^\..+\.(tmp|old)-[0-9a-f]{8}$")


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


def copy_dir_atomic(src: Path, dst: Path) -> Path:
    """Copy directory src to dst through a temporary sibling: dst is either the old copy or the complete new one."""
    tmp = temp_sibling(dst)
    try:
        shutil.copytree(src, tmp)
        replace_dir(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def sweep_temporaries(*dirs: Path) -> list[Path]:
    """Delete the temporaries of our own naming (see _TEMP_NAME) directly inside each of `dirs`; returns them.

    Call only when no save can be in progress in these directories (at the start of a run or a deploy): a killed
    save leaves its temporary behind, and nothing else would ever remove it."""
    removed = []
    for d in dirs:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if _TEMP_NAME.match(p.name):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed
