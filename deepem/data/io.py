"""Reading and writing CT volumes with SimpleITK, and the world <-> voxel mapping.

Arrays are indexed (z, y, x). World coordinates are (x, y, z) in mm, as in LUNA16's tables and
in SimpleITK, so `origin`, `spacing` and `direction` keep SimpleITK's (x, y, z) order:

    world_xyz = origin + direction @ (spacing * index_xyz),   index_xyz = voxel_zyx[::-1]

`direction` is any 3x3 matrix (row-major, as SimpleITK returns it), not only the identity.
"""
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from . import mhd

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class ScanReadError(RuntimeError):
    """A scan that exists but cannot be read (corrupt header, truncated data, no DICOM series)."""


@dataclass
class Volume:
    """A CT volume: `array` (z, y, x) plus its geometry in SimpleITK's (x, y, z) order."""

    array: np.ndarray
    origin: tuple = (0.0, 0.0, 0.0)
    spacing: tuple = (1.0, 1.0, 1.0)
    direction: tuple = field(default=IDENTITY)

    @property
    def spacing_zyx(self) -> np.ndarray:
        return np.asarray(self.spacing, dtype=np.float64)[::-1].copy()

    def voxel_to_world(self, voxel_zyx) -> np.ndarray:
        return voxel_to_world(voxel_zyx, self.origin, self.spacing, self.direction)

    def world_to_voxel(self, world_xyz) -> np.ndarray:
        return world_to_voxel(world_xyz, self.origin, self.spacing, self.direction)


def _geometry(origin, spacing, direction):
    origin = np.asarray(origin, dtype=np.float64).reshape(3)
    spacing = np.asarray(spacing, dtype=np.float64).reshape(3)
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError("spacing must be finite and positive, got %s" % (spacing.tolist(),))
    return origin, spacing, direction


def voxel_to_world(voxel_zyx, origin, spacing, direction=IDENTITY) -> np.ndarray:
    """Continuous voxel indices (z, y, x) [..., 3] -> world (x, y, z) mm [..., 3]."""
    origin, spacing, direction = _geometry(origin, spacing, direction)
    idx_xyz = np.asarray(voxel_zyx, dtype=np.float64)[..., ::-1]
    return origin + (idx_xyz * spacing) @ direction.T


def world_to_voxel(world_xyz, origin, spacing, direction=IDENTITY) -> np.ndarray:
    """World (x, y, z) mm [..., 3] -> continuous voxel indices (z, y, x) [..., 3]."""
    origin, spacing, direction = _geometry(origin, spacing, direction)
    rel = np.asarray(world_xyz, dtype=np.float64) - origin
    # Solve instead of transposing: direction need not be orthonormal (sheared DICOM stacks).
    idx_xyz = np.linalg.solve(direction, rel.reshape(-1, 3).T).T.reshape(rel.shape) / spacing
    return idx_xyz[..., ::-1]


def _sitk():
    try:
        import SimpleITK
    except ImportError as e:  # an optional dependency: the kernels do not need it
        raise ImportError("reading and writing scans needs SimpleITK: pip install 'deepem[data]'") from e
    return SimpleITK


def read_image(path, dtype=np.int16, fill_nonfinite=None) -> Volume:
    """Reads `.mhd` (+ `.raw`), `.nii`/`.nii.gz`, any other SimpleITK format, or a folder
    holding one DICOM series. Raises FileNotFoundError for a missing path and ScanReadError
    (naming the path) for anything SimpleITK cannot read.

    Voxels are never silently changed on the way to `dtype` (None: as stored): NaN or Inf
    voxels are a ScanReadError naming the count, unless `fill_nonfinite` gives the value
    that replaces them; float values are rounded; values outside an integer dtype's range
    are clipped to it with a warning naming the count (a plain cast would wrap 40000 to
    -25536)."""
    sitk = _sitk()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError("scan not found: %s" % path)
    try:
        if os.path.isdir(path):
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(path)
            if not series:
                raise ScanReadError("no DICOM series in folder %s" % path)
            if len(series) > 1:
                raise ScanReadError("%d DICOM series in folder %s; expected one" % (len(series), path))
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(path, series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(path)
    except ScanReadError:
        raise
    except RuntimeError as e:  # SimpleITK raises RuntimeError for unreadable files
        first = str(e).strip().splitlines()
        why = mhd.diagnose(path) if path.lower().endswith(".mhd") else None
        raise ScanReadError("cannot read scan %s: %s" % (path, why or (first[-1] if first else e))) from e
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(
            "scan %s is not a 3D scalar image (dimension %d, %d components)"
            % (path, image.GetDimension(), image.GetNumberOfComponentsPerPixel())
        )
    array = sitk.GetArrayFromImage(image)
    if dtype is not None:
        array = convert_voxels(array, dtype, path, fill_nonfinite)
    return Volume(array, tuple(image.GetOrigin()), tuple(image.GetSpacing()), tuple(image.GetDirection()))


def convert_voxels(array, dtype, path, fill_nonfinite=None) -> np.ndarray:
    """`array` as `dtype` without a silent change: see read_image."""
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array)
        count = int(bad.sum())
        if count:
            if fill_nonfinite is None:
                raise ScanReadError("scan %s has %d non-finite voxels (NaN or Inf) of %d; refusing to guess their "
                                    "values (read_image(..., fill_nonfinite=HU) replaces them)"
                                    % (path, count, array.size))
            array = np.where(bad, np.float64(fill_nonfinite), array)
        if np.issubdtype(dtype, np.integer):
            array = np.rint(array)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        outside = int(np.count_nonzero((array < info.min) | (array > info.max)))
        if outside:
            warnings.warn("scan %s: %d voxels outside the %s range [%d, %d] were clipped to it"
                          % (path, outside, dtype.name, info.min, info.max), stacklevel=3)
            array = np.clip(array, info.min, info.max)
    return array.astype(dtype, copy=False)


def write_image(volume: Volume, path, compress: bool = False) -> None:
    """Writes a volume with SimpleITK; `.mhd` writes the `.raw` beside it. The files appear
    atomically (written under temporary names, then renamed)."""
    sitk = _sitk()
    path = os.fspath(path)
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetOrigin(tuple(float(v) for v in volume.origin))
    image.SetSpacing(tuple(float(v) for v in volume.spacing))
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction).reshape(9)))
    folder, name = os.path.split(path)
    if name.endswith(".mhd"):
        # The .mhd names its .raw; write both under a temp stem, then fix the name and rename.
        stem = name[: -len(".mhd")]
        tmp_stem = ".tmp-%d-%s" % (os.getpid(), stem)
        tmp_mhd = os.path.join(folder, tmp_stem + ".mhd")
        sitk.WriteImage(image, tmp_mhd, compress)
        data_ext = ".zraw" if compress else ".raw"
        os.replace(os.path.join(folder, tmp_stem + data_ext), os.path.join(folder, stem + data_ext))
        with open(tmp_mhd) as f:
            header = f.read().replace(tmp_stem + data_ext, stem + data_ext)
        with open(tmp_mhd, "w") as f:
            f.write(header)
        os.replace(tmp_mhd, path)
    else:
        tmp = os.path.join(folder, ".tmp-%d-%s" % (os.getpid(), name))
        sitk.WriteImage(image, tmp, compress)
        os.replace(tmp, path)
