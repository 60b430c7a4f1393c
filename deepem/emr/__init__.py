"""Medical records -> weak labels (the first stage of DeepEM: weak labels are mined, not given).

- dicom_index.py: a header-only index of a DICOM tree (patients, studies, series, the world z of
  every instance), cached so that a rerun reads only new or changed files;
- nlst.py: NLST's Spiral CT Abnormalities table, read by column name, with NLST's codes;
- assign.py: a record's slice number -> a series and a world z, through the index (the slice
  number is looked up among InstanceNumbers, never used as an array index);
- reports.py: findings of free-text chest CT reports (lobe, image reference, size, texture);
- weak_labels.py: both sources -> weak_labels.csv and weak_labels_rejected.csv.

This stage sits beside deepem.data and imports only from it. The optional library (pydicom)
is imported where it is used, so `import deepem.emr` does not need it; reports.py uses the
standard library alone.
"""
from .reports import Finding, extract_findings, extract_mentions

__all__ = ["Finding", "extract_findings", "extract_mentions"]
