"""Why a MetaImage (.mhd) file cannot be read, in words: SimpleITK reports a truncated .raw as
"No such file or directory" (the byte counts go only to ITK's stderr) and a NaN spacing as a
spacing of 0, so on a failed read the header is checked here to name the real cause."""
import math
import os

ELEMENT_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                 "MET_LONG": 8, "MET_ULONG": 8, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                 "MET_DOUBLE": 8}
MAX_HEADER_BYTES = 1 << 16  # a header is a few hundred bytes; anything bigger is not one


def read_header(path) -> dict:
    """The `key = value` lines of a .mhd header (up to ElementDataFile, which ends it)."""
    fields = {}
    with open(path, "rb") as f:
        text = f.read(MAX_HEADER_BYTES).decode("latin-1")
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        fields[key] = value
        if key == "ElementDataFile":
            break
    return fields


def _numbers(text):
    try:
        return [float(v) for v in text.split()]
    except ValueError:
        return None


def diagnose(path):
    """A sentence saying what is wrong with the .mhd at `path`, or None if nothing is found."""
    try:
        h = read_header(path)
    except OSError as e:
        return "cannot read the header: %s" % e
    for key in ("ElementSpacing", "ElementSize"):
        if key in h:
            values = _numbers(h[key])
            if values is None or not values or not all(math.isfinite(v) and v > 0 for v in values):
                return "%s '%s' must be finite positive numbers (mm)" % (key, h[key])
    dims = _numbers(h.get("DimSize", ""))
    if not dims or not all(v >= 1 and v == int(v) for v in dims):
        return "DimSize '%s' must be positive whole numbers" % h.get("DimSize", "")
    element = h.get("ElementType", "")
    if element not in ELEMENT_BYTES:
        return "ElementType '%s' is not one of %s" % (element, ", ".join(sorted(ELEMENT_BYTES)))
    data = h.get("ElementDataFile", "")
    if not data or data == "LOCAL" or data.startswith("LIST") or "%" in data:
        return None  # inline, listed or patterned data: SimpleITK's own message stands
    data_path = os.path.join(os.path.dirname(os.fspath(path)), data)
    if not os.path.isfile(data_path):
        return "its data file %s (ElementDataFile) does not exist" % data_path
    if h.get("CompressedData", "False").lower() == "true":
        return None
    channels = int((_numbers(h.get("ElementNumberOfChannels", "1")) or [1])[0])
    expected = int(math.prod(int(v) for v in dims)) * ELEMENT_BYTES[element] * max(channels, 1)
    actual = os.path.getsize(data_path)
    if actual < expected:
        return ("its data file %s is truncated: %d bytes, the header (DimSize %s, %s) needs %d"
                % (data_path, actual, h["DimSize"], element, expected))
    return None
