"""A phantom scan written as DICOM CT series, the way NLST's exams arrive from TCIA: real
tags, InstanceNumber running head to feet as scanners number them, the screening year coded
in StudyDate and the participant id in PatientID; optionally a second reconstruction (thicker
slices or a softer kernel) and a localizer."""
import os
import uuid

import numpy as np

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NLST_STUDY_DATES = ("19990102", "20000102", "20010102")  # T0, T1, T2
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "phantom.deepem")


def uid(*parts):
    """A deterministic DICOM UID from any parts: 2.25.<a name-based UUID as an integer>
    (DICOM PS3.5 B.2), so a seed's exams carry the same UIDs in every run. (pydicom's
    generate_uid ignores its entropy sources when prefix is None: a random UUID each call.)"""
    return "2.25.%d" % uuid.uuid5(_UID_NAMESPACE, "|".join(str(p) for p in parts)).int


def _series_dataset(study, series, geometry, shape):
    """The tags every image of a series shares; _set_image adds an image's own."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.Modality = CT_IMAGE_STORAGE, "CT"
    ds.PatientID, ds.PatientName = study["pid"], "%s^PHANTOM" % study["pid"]
    ds.StudyDate, ds.StudyInstanceUID, ds.StudyID = study["date"], study["uid"], "1"
    ds.AccessionNumber = study.get("accession", "")
    ds.SeriesInstanceUID, ds.SeriesNumber = series["uid"], series["number"]
    ds.SeriesDescription = series["description"]
    ds.ImageType = series["image_type"]
    ds.ConvolutionKernel = series.get("kernel", "")
    ds.FrameOfReferenceUID = study["frame"]
    ds.ImageOrientationPatient = [round(float(v), 6) for v in geometry["orientation"]]
    ds.PixelSpacing = [round(float(v), 6) for v in geometry["pixel_spacing"]]  # row spacing, column spacing
    ds.SliceThickness = round(float(geometry["thickness"]), 4)
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    return ds


def _set_image(ds, series, image, instance_number, position):
    """One image's tags, set on the series' dataset in place (rebuilding all ~35 tags per file
    took most of a weak scan's record-writing time)."""
    sop = uid(series["uid"], instance_number)
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.PixelData = np.ascontiguousarray(image, dtype="<i2").tobytes()
    return ds


def _save(ds, path):
    tmp = os.path.join(os.path.dirname(path), ".tmp-%d-%s" % (os.getpid(), os.path.basename(path)))
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def write_series(volume, folder, study, series):
    """Writes `volume` (io.Volume, int16 HU, slices along its direction's third column) as one
    DICOM file per slice into `folder`. InstanceNumber 1 is the head-most slice (highest z).
    Returns the instance number of every slice index (array [N])."""
    os.makedirs(folder, exist_ok=True)
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    sx, sy, sz = (float(v) for v in volume.spacing)
    geometry = {"orientation": np.concatenate([direction[:, 0], direction[:, 1]]), "pixel_spacing": (sy, sx),
                "thickness": series.get("thickness", sz)}
    n = volume.array.shape[0]
    origin = np.asarray(volume.origin, dtype=np.float64)
    positions = origin[None, :] + np.arange(n)[:, None] * sz * direction[:, 2][None, :]
    order = np.argsort(-positions[:, 2], kind="stable")  # head (high z) first
    numbers = np.empty(n, dtype=np.int64)
    numbers[order] = np.arange(1, n + 1)
    ds = _series_dataset(study, series, geometry, volume.array.shape[1:])
    for k in range(n):
        _save(_set_image(ds, series, volume.array[k], int(numbers[k]), positions[k]),
              os.path.join(folder, "%04d.dcm" % numbers[k]))
    return numbers


def thick_reconstruction(volume, factor=2):
    """Slices averaged `factor` at a time: a thicker reconstruction of the same acquisition."""
    from ..io import Volume

    n = volume.array.shape[0] // factor * factor
    arr = volume.array[:n].astype(np.float32).reshape(n // factor, factor, *volume.array.shape[1:]).mean(1)
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    sx, sy, sz = volume.spacing
    origin = np.asarray(volume.origin) + (factor - 1) / 2 * sz * direction[:, 2]
    return Volume(np.rint(arr).astype(np.int16), tuple(origin), (sx, sy, sz * factor), volume.direction)


def soft_reconstruction(volume, sigma_px=1.0):
    """The same slices through a softer kernel (an in-plane blur)."""
    from scipy.ndimage import gaussian_filter

    from ..io import Volume

    arr = gaussian_filter(volume.array.astype(np.float32), (0, sigma_px, sigma_px))
    return Volume(np.rint(arr).astype(np.int16), volume.origin, volume.spacing, volume.direction)


def write_localizer(volume, folder, study, series):
    """A coronal projection image tagged LOCALIZER (never a target for labels)."""
    os.makedirs(folder, exist_ok=True)
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    sx, _, sz = volume.spacing
    image = volume.array.astype(np.float32).mean(1)[::-1]  # rows head to feet, columns along x
    top = np.asarray(volume.origin) + (volume.array.shape[0] - 1) * sz * direction[:, 2]
    geometry = {"orientation": np.concatenate([direction[:, 0], -direction[:, 2]]), "pixel_spacing": (sz, sx),
                "thickness": 1.0}
    image = np.rint(image).astype(np.int16)
    ds = _set_image(_series_dataset(study, series, geometry, image.shape), series, image, 1, top)
    _save(ds, os.path.join(folder, "0001.dcm"))
