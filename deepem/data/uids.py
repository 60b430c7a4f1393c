"""A seriesuid becomes part of file names (preprocessed scans, overlays), so it must be a
plain file name: a uid read from a split, a uid list or a table that holds a path separator,
or is '.' or '..', could make deepem read or write outside the folders it was given."""
import os

_SEPARATORS = tuple({"/", "\\", os.sep, os.altsep} - {None})


class UnsafeUid(ValueError):
    """A seriesuid that is not a plain file name; the message names it and where it came from."""


def check_uid(uid, source: str = "") -> str:
    """Returns `uid` if it is a plain file name (no path separator, not '.' or '..', no NUL
    or control character, not empty), else raises UnsafeUid naming it and `source`."""
    where = " (from %s)" % source if source else ""
    if not isinstance(uid, str):
        raise UnsafeUid("seriesuid %r%s is not a string" % (uid, where))
    why = None
    if uid == "":
        why = "it is empty"
    elif uid in (".", ".."):
        why = "it names a folder"
    elif any(s in uid for s in _SEPARATORS):
        why = "it holds a path separator"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in uid):
        why = "it holds a control character"
    if why:
        raise UnsafeUid("seriesuid %r%s is not a plain file name (%s); deepem uses seriesuids as file names "
                        "and refuses any that could point outside its folders" % (uid, where, why))
    return uid


def check_uids(uids, source: str = "") -> list:
    """check_uid on every uid; returns them as a list."""
    return [check_uid(u, source) for u in uids]
