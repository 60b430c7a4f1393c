import pytest
import torch

from deepem.ops import boxes as bf


def test_cube_round_trip_and_values():
    cubes = torch.tensor([[10.0, 20.0, 30.0, 4.0], [0.5, 1.5, 2.5, 1.0]], dtype=torch.float64)
    boxes = bf.cubes_to_boxes(cubes)
    assert boxes[0].tolist() == [8, 18, 28, 12, 22, 32]
    torch.testing.assert_close(bf.boxes_to_cubes(boxes), cubes)


def test_monai_formats_round_trip():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 11.0, 14.0, 19.0]])  # z1 y1 x1 z2 y2 x2
    xyz = bf.boxes_to_xyzxyz(boxes)
    assert xyz.tolist() == [[3, 2, 1, 19, 14, 11]]
    torch.testing.assert_close(bf.xyzxyz_to_boxes(xyz), boxes)
    ccc = bf.boxes_to_cccwhd(boxes)
    assert ccc.tolist() == [[11, 8, 6, 16, 12, 10]]  # xc yc zc, x/y/z sizes
    torch.testing.assert_close(bf.cccwhd_to_boxes(ccc), boxes)


def test_batched_shapes_and_dtype_kept():
    cubes = torch.rand(2, 5, 4, dtype=torch.float16)
    assert bf.cubes_to_boxes(cubes).shape == (2, 5, 6)
    assert bf.cubes_to_boxes(cubes).dtype == torch.float16


@pytest.mark.parametrize("fn,width", [(bf.cubes_to_boxes, 4), (bf.boxes_to_cubes, 6), (bf.cccwhd_to_boxes, 6)])
def test_wrong_width_names_the_format(fn, width):
    with pytest.raises(ValueError, match="shape \\[\\.\\.\\., %d\\]" % width):
        fn(torch.zeros(3, width + 1))
