"""Keep freed memory in the process while the network runs on the CPU (whole-scan detection,
training epochs).

glibc's malloc serves every block above its mmap threshold (32 MiB at most) with a fresh
mmap and unmaps it when freed, so each full-resolution activation of a whole-scan pass
(hundreds of MiB) is page-faulted in again, 4 KiB at a time, and zeroed by the kernel. On the
2-core VM a quarter-width pass over a LUNA16-size scan spent 2.3 of its 9.2 core-seconds in
the kernel that way (863k page faults per pass). Inside `reuse_freed_memory()` malloc takes
every block from its heap (M_MMAP_MAX 0), and freed memory stays in the process (the heap is
trimmed only when 2 GiB at its top are free), for the next layer, tile and scan: after the
first scan a pass page-faults almost nothing. Training steps are smaller (blocks under glibc's
mmap threshold) but glibc trimmed and regrew its heap between them: the demo's step 171-177 ->
152-154 ms with the scope. On the way out blocks above 32 MiB are mmapped
again (the largest threshold glibc's own dynamic rule reaches) and what the heap holds stays
for the next detection; `release_freed_memory()` gives it back. PyTorch's CPU tuning guide gets
the same from jemalloc or tcmalloc by LD_PRELOAD; this needs no preload. Where the C library
is not glibc, or the environment says DEEPEM_KEEP_FREED_MEMORY=0, it does nothing.
"""
import ctypes
import os
import platform
import threading
from contextlib import contextmanager

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_KEEP_TRIM = 2 ** 31 - 1  # mallopt takes an int: 2 GiB of free heap top before trimming
_AFTER_MMAP_THRESHOLD = 32 * 2 ** 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
_AFTER_MMAP_MAX = 65536  # glibc's default

_lock = threading.Lock()
_depth = 0


def _glibc():
    if os.environ.get("DEEPEM_KEEP_FREED_MEMORY", "1") == "0":
        return None
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def available() -> bool:
    """Whether reuse_freed_memory() changes anything here (glibc's malloc, not switched off)."""
    return _LIBC is not None


@contextmanager
def reuse_freed_memory():
    """Within: blocks come from malloc's heap and freed ones stay in the process (see the
    module's docstring). Nested and concurrent uses share one setting."""
    global _depth
    with _lock:
        _depth += 1
        if _depth == 1 and _LIBC is not None:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, _KEEP_TRIM)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _LIBC is not None:
                _LIBC.mallopt(_M_MMAP_MAX, _AFTER_MMAP_MAX)
                _LIBC.mallopt(_M_MMAP_THRESHOLD, _AFTER_MMAP_THRESHOLD)


def release_freed_memory() -> None:
    """Give the free memory of malloc's heap back to the system (glibc's malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
