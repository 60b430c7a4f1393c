"""Synthetic chest CTs in LUNA16 layout: the data that ships with deepem.

A scan is a pure function of (seed, index): the same seed gives the same bytes whatever the
worker count. What is drawn, each part an option with a realistic default:

- anatomy.py: an adult chest (body wall, ribs, spine, sternum, mediastinum, heart, trachea),
  two lungs of 4.5-6.5 L together with a gravity gradient, oblique and horizontal fissures
  that define the lobes (lobe_of);
- vessels.py: arterial and venous trees per lung that branch (Murray's law), taper and bend
  towards the pleura with smooth junctions, and airways with walls beside the arteries;
- nodules.py: LUNA16-like nodules (count, size, solid / part-solid / ground glass,
  juxtapleural / fissural / juxtavascular, round / lobulated / spiculated);
- lookalikes.py: calcified granulomas, scars, mucus plugs;
- noise.py: correlated low-dose CT noise; render.py: partial volume, in-plane PSF and the
  slice profile, drawn analytically per object;
- scan.py: presets ('luna16': whole chest, 512 x 512 x ~130-280 slices; 'demo': a
  128 x 128 pixel, 64-80 mm window onto one lung's middle, where the lobes meet), make_scan; dataset.py: make_dataset.

Anatomy is built along the array axes: with the identity direction axis 0 runs foot to head
(world z), axis 1 front to back (y) and axis 2 right to left (x), as in LUNA16 (LPS).
"""
from .anatomy import Chest, Lung, lobe_of
from .dataset import make_dataset, series_uid, split_names
from .nodules import ATTACHMENTS, SHAPES, TEXTURES, NoduleOptions, draw_count, draw_nodule
from .lookalikes import LookalikeOptions
from .scan import PRESETS, SEG_LEFT, SEG_RIGHT, Z_SPACINGS, Options, make_scan, plan_scan, render_scan

__all__ = [
    "ATTACHMENTS", "Chest", "LookalikeOptions", "Lung", "NoduleOptions", "Options", "PRESETS", "SEG_LEFT",
    "SEG_RIGHT", "SHAPES", "TEXTURES", "Z_SPACINGS", "draw_count", "draw_nodule", "lobe_of", "make_dataset",
    "make_scan", "plan_scan", "render_scan", "series_uid", "split_names",
]
