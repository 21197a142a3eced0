"""Files in the runtime directory are written whole: a reader sees the old one or the new one.

Why one helper: the config snapshot, its rule names, the health pidfile and the flows request and
answers are all read by another process while they may be rewritten (a reader once found the
pidfile empty mid-write); writing beside the file and renaming over it is atomic on one file
system.
"""

from __future__ import annotations

from pathlib import Path


def write_whole(path: Path, data: bytes | str) -> None:
    """Replace `path` with `data` in one rename (OSError, e.g. ENOSPC, leaves the old file)."""
    temporary = path.with_suffix(path.suffix + ".new")
    if isinstance(data, str):
        temporary.write_text(data)
    else:
        temporary.write_bytes(data)
    temporary.replace(path)
