"""deepem.data.io: real SimpleITK reads and writes, world <-> voxel with non-identity direction."""
import os

import numpy as np
import pytest

pytest.importorskip("scipy")
sitk = pytest.importorskip("SimpleITK")

from deepem.data import io


def rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = [
    np.eye(3),
    np.diag([-1.0, -1.0, 1.0]),  # RAS-style flip
    np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]),  # 90 degrees about z
    rotation(0.3, -0.2, 1.1),
    rotation(0.1, 0.4, -2.0) @ np.diag([1.0, 1.0, -1.0]),  # rotation with a reflection
]


@pytest.mark.parametrize("d", range(len(DIRECTIONS)))
def test_world_voxel_matches_simpleitk_and_round_trips(d):
    direction = DIRECTIONS[d]
    rng = np.random.default_rng(d)
    origin, spacing = rng.uniform(-300, 300, 3), rng.uniform(0.5, 2.5, 3)
    image = sitk.Image(5, 6, 7, sitk.sitkInt16)
    image.SetOrigin(origin.tolist())
    image.SetSpacing(spacing.tolist())
    image.SetDirection(direction.reshape(9).tolist())
    voxels = rng.uniform(-5, 50, (20, 3))  # continuous (z, y, x)
    world = io.voxel_to_world(voxels, origin, spacing, direction.reshape(9))
    for v, w in zip(voxels, world):
        expect = image.TransformContinuousIndexToPhysicalPoint(v[::-1].tolist())
        np.testing.assert_allclose(w, expect, atol=1e-9)
    back = io.world_to_voxel(world, origin, spacing, direction)
    np.testing.assert_allclose(back, voxels, atol=1e-9)
    for w, v in zip(world, back):
        np.testing.assert_allclose(image.TransformPhysicalPointToContinuousIndex(w.tolist())[::-1], v, atol=1e-9)
    # shapes: one point, and batched [..., 3]
    assert io.world_to_voxel(world[0], origin, spacing, direction).shape == (3,)
    assert io.voxel_to_world(voxels.reshape(4, 5, 3), origin, spacing, direction).shape == (4, 5, 3)


def test_non_identity_direction_is_not_ignored():
    v = np.array([[2.0, 3.0, 4.0]])
    a = io.voxel_to_world(v, (0, 0, 0), (1, 1, 1))
    b = io.voxel_to_world(v, (0, 0, 0), (1, 1, 1), DIRECTIONS[2])
    np.testing.assert_allclose(a, [[4, 3, 2]])
    np.testing.assert_allclose(b, [[-3, 4, 2]])


def test_bad_spacing_raises():
    with pytest.raises(ValueError, match="spacing"):
        io.world_to_voxel([0, 0, 0], (0, 0, 0), (1, 0, 1))


def _volume(direction):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1000, (7, 9, 11)).astype(np.int16)
    return io.Volume(array, (-12.5, 30.25, -300.0), (0.7, 0.7, 2.5), tuple(np.asarray(direction).reshape(9)))


@pytest.mark.parametrize("name", ["scan.mhd", "scan.nii.gz", "scan.nii"])
def test_write_read_round_trip(tmp_path, name):
    vol = _volume(DIRECTIONS[3])
    path = tmp_path / name
    io.write_image(vol, path)
    back = io.read_image(path)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-5)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-6)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    world = back.voxel_to_world([[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(back.world_to_voxel(world), [[1.0, 2.0, 3.0]], atol=1e-6)
    assert sorted(os.listdir(tmp_path)) == (["scan.mhd", "scan.raw"] if name == "scan.mhd" else [name])


def test_mhd_header_names_its_raw(tmp_path):
    io.write_image(_volume(np.eye(3)), tmp_path / "a.mhd")
    header = (tmp_path / "a.mhd").read_text()
    assert "ElementDataFile = a.raw" in header
    assert "TransformMatrix" in header


def _write_dicom_series(folder, vol):
    """A real DICOM series, one file a slice, as scanners write them."""
    os.makedirs(folder)
    image = sitk.GetImageFromArray(vol.array)
    image.SetSpacing(vol.spacing)
    image.SetOrigin(vol.origin)
    image.SetDirection(vol.direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = vol.direction
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        s.SetMetaData("0008|0060", "CT")
        s.SetMetaData("0020|000d", "1.2.3.4")
        s.SetMetaData("0020|000e", "1.2.3.4.5")
        s.SetMetaData("0020|0037", "\\".join(map(str, (d[0], d[3], d[6], d[1], d[4], d[7]))))
        s.SetMetaData("0020|0032", "\\".join(map(str, image.TransformIndexToPhysicalPoint((0, 0, k)))))
        s.SetMetaData("0020|0013", str(k))
        s.SetMetaData("0018|0050", str(vol.spacing[2]))
        s.SetMetaData("0028|0030", "%s\\%s" % (vol.spacing[1], vol.spacing[0]))
        writer.SetFileName(os.path.join(folder, "slice%03d.dcm" % k))
        writer.Execute(s)


def test_dicom_series_folder(tmp_path):
    vol = _volume(np.diag([1.0, 1.0, 1.0]))
    _write_dicom_series(tmp_path / "series", vol)
    back = io.read_image(tmp_path / "series")
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.mhd"):
        io.read_image(tmp_path / "nothere.mhd")


def test_corrupt_files_name_the_path(tmp_path):
    io.write_image(_volume(np.eye(3)), tmp_path / "trunc.mhd")
    raw = (tmp_path / "trunc.raw").read_bytes()
    (tmp_path / "trunc.raw").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(io.ScanReadError, match="trunc.mhd"):
        io.read_image(tmp_path / "trunc.mhd")
    (tmp_path / "garbage.mhd").write_text("this is not a MetaImage header\n")
    with pytest.raises(io.ScanReadError, match="garbage.mhd"):
        io.read_image(tmp_path / "garbage.mhd")
    io.write_image(_volume(np.eye(3)), tmp_path / "noraw.mhd")
    os.remove(tmp_path / "noraw.raw")
    with pytest.raises(io.ScanReadError, match="noraw.mhd"):
        io.read_image(tmp_path / "noraw.mhd")
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.ScanReadError, match="no DICOM series"):
        io.read_image(tmp_path / "empty")
