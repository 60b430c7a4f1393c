"""The one way deepem writes an output file: to a temp file beside it (same folder, so the
rename is atomic), fsync, then os.replace over the target. A crash or an error mid-write leaves
the old file (or none) in place, never a truncated one."""
import os
import tempfile


def atomic_write(path, write, mode: str = "wb") -> None:
    """Calls write(f) on a temp file next to `path` opened with `mode` ('wb' or 'w'; text
    files get newline=''), then renames it to `path`. Creates the folder if needed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-" + os.path.basename(path) + ".")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
