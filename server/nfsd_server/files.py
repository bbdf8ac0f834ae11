"""File helpers shared by the engine, the exporter and the server."""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one.

    The temporary name is unique per call (threads may write the same folder at once) and sits in the
    target folder so the final rename never crosses file systems.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; OSError otherwise.

    For files a record names or a data dir holds, where anything may have been put: a FIFO would block
    ``read`` forever (opened non-blocking, then refused), /dev/zero or a huge file would fill memory (refused
    by size), and a symlink as the last component is not followed (ELOOP).
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        chunks, size = [], 0
        while size <= max_bytes:  # a file that grew since fstat is still cut at the cap
            chunk = os.read(descriptor, max_bytes + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(descriptor)
    if size > max_bytes:
        raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
    return b"".join(chunks)
