"""LUNA16-format data: reading scans and tables, preprocessing, the phantom generator and
the training datasets. Independent of the compiled kernels (deepem.ops)."""
from . import io, lung_mask, phantom, preprocess, tables
from .io import ScanReadError, Volume, read_image, voxel_to_world, world_to_voxel, write_image
from .tables import TableError

__all__ = [
    "io", "lung_mask", "phantom", "preprocess", "tables",
    "ScanReadError", "TableError", "Volume", "read_image", "write_image", "voxel_to_world", "world_to_voxel",
]
