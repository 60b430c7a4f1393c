"""The one way deepem writes an output file: to a temp file beside it (same folder, so the
rename is atomic), fsync, then os.replace over the target. A crash or an error mid-write leaves
the old file (or none) in place, never a truncated one.

The file gets the mode any new file gets under the process umask (mkstemp alone would make it
0600). A process killed mid-write leaves its temp file behind; temp names carry the writer's
pid (`.tmp-<pid>-<name>.`), so `remove_stale_temps` can delete those of writers that are gone
when a run starts or resumes in a folder, and never one that is still being written."""
import os
import re
import tempfile

TEMP_PATTERN = re.compile(r"^\.tmp-(\d+)-")


def temp_prefix(name: str) -> str:
    """The prefix of this process's temp files for target file `name`."""
    return ".tmp-%d-%s." % (os.getpid(), name)


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask


def atomic_write(path, write, mode: str = "wb") -> None:
    """Calls write(f) on a temp file next to `path` opened with `mode` ('wb' or 'w'; text
    files get newline=''), then renames it to `path`. Creates the folder if needed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(os.path.basename(path)))
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder, recursive: bool = False) -> list:
    """Deletes the temp files under `folder` left by writers that no longer run; returns their
    paths. Folders whose names start with '.' are not entered."""
    removed = []
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return removed
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for name in files:
            m = TEMP_PATTERN.match(name)
            if m and not _alive(int(m.group(1))):
                path = os.path.join(root, name)
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
    return removed
