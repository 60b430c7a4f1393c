"""Named splits of a data set: a JSON {name: [seriesuid, ...]} (phantom and demo write
splits.json), or a text file with one uid a line in place of a name."""
import json
import os

from .uids import check_uids


HELD_OUT = "test"  # a splits file's split of this name is held out: only the final scoring reads it


def held_out(splits_json: str) -> list:
    """uids of the held-out split (HELD_OUT) of `splits_json`; none if it has no such split or
    there is no such file."""
    if not os.path.isfile(splits_json):
        return []
    with open(splits_json) as f:
        splits = json.load(f)
    uids = splits.get(HELD_OUT) if isinstance(splits, dict) else None
    return list(uids) if isinstance(uids, list) else []


def read_split(split: str, splits_json: str) -> list:
    """uids of `split`: a text file (one uid a line) if such a file exists, else the name's
    list in `splits_json`. Every uid must be a plain file name (deepem.data.uids)."""
    if os.path.isfile(split):
        with open(split) as f:
            return check_uids([line.strip() for line in f if line.strip()], split)
    if not os.path.isfile(splits_json):
        raise FileNotFoundError("splits file not found: %s" % splits_json)
    with open(splits_json) as f:
        splits = json.load(f)
    if split not in splits:
        raise KeyError("split '%s' is not in %s (it has: %s)" % (split, splits_json, ", ".join(splits)))
    if not isinstance(splits[split], list):
        raise ValueError("split '%s' in %s must be a list of seriesuids, got %s"
                         % (split, splits_json, type(splits[split]).__name__))
    return check_uids(splits[split], "split '%s' of %s" % (split, splits_json))
