"""The findings of detection as a table: `Marks`, numpy columns, one row per mark.

World coordinates are ITK physical mm (x, y, z; LPS, as SimpleITK reads DICOM and as LUNA16's
tables use them); grid_* are the preprocessed scan's voxels (z, y, x, side; 1 voxel =
meta['resolution'] mm)."""
from dataclasses import dataclass, fields

import numpy as np

from ..data.preprocess import grid_to_world

COORDINATES = "world mm, ITK/LPS physical (x, y, z), as LUNA16"
CSV_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm")


@dataclass
class Marks:
    seriesuid: np.ndarray  # str [M]
    x: np.ndarray  # float64 [M] world mm
    y: np.ndarray
    z: np.ndarray
    diameter_mm: np.ndarray
    probability: np.ndarray  # sigmoid(logit)
    logit: np.ndarray
    grid_z: np.ndarray  # preprocessed voxels
    grid_y: np.ndarray
    grid_x: np.ndarray
    grid_d: np.ndarray

    coordinates = COORDINATES

    @classmethod
    def empty(cls):
        return cls(np.zeros(0, dtype=object), *[np.zeros(0) for _ in range(10)])

    @classmethod
    def from_grid(cls, marks, meta, uid=None):
        """marks [M, 5] (logit, z, y, x, d) in the preprocessed grid of `meta` (tensor or
        array) -> Marks in world mm through the stored geometry."""
        m = marks.detach().cpu().double().numpy() if hasattr(marks, "detach") else np.asarray(marks, np.float64)
        m = m.reshape(-1, 5)
        uid = meta.get("seriesuid", "") if uid is None else uid
        world = grid_to_world(m[:, 1:4], meta).reshape(-1, 3)
        return cls(np.full(len(m), uid, dtype=object), world[:, 0], world[:, 1], world[:, 2],
                   m[:, 4] * float(meta.get("resolution", 1.0)), np.exp(-np.logaddexp(0.0, -m[:, 0])), m[:, 0],
                   m[:, 1], m[:, 2], m[:, 3], m[:, 4])

    @classmethod
    def concat(cls, parts):
        parts = list(parts)
        if not parts:
            return cls.empty()
        return cls(*[np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)])

    def __len__(self):
        return len(self.seriesuid)

    def __getitem__(self, index):
        """Rows by index, slice or boolean mask, as Marks."""
        return type(self)(*[np.atleast_1d(getattr(self, f.name)[index]) for f in fields(self)])

    def select(self, uid):
        return self[self.seriesuid == uid]

    @property
    def world_xyz(self):
        return np.stack([self.x, self.y, self.z], 1)

    def cccwhd(self):
        """MONAI 'cccwhd' boxes in world mm [M, 6]: (x, y, z) centre, then the cube side 3 times."""
        d = self.diameter_mm[:, None]
        return np.concatenate([self.world_xyz, d, d, d], 1)

    def rows(self):
        """CSV rows in CSV_COLUMNS order (LUNA16 submission columns plus diameter_mm)."""
        return list(zip(self.seriesuid.tolist(), self.x.tolist(), self.y.tolist(), self.z.tolist(),
                        self.probability.tolist(), self.diameter_mm.tolist()))
