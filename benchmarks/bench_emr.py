"""How fast is the DICOM header index that `deepem weak-labels` builds? Headers per second.

Writes a DICOM tree of --series series x --images images (CT tags as NLST's; 32 x 32 pixels,
since the index never reads pixel data, though a cold disk would), then times in one process:
- deepem.emr.index_dicom with 1 and with 2 worker processes (an empty cache each time),
- the same again over its cache (a rerun: every header comes from the cache),
and, on a sample of files, the per-file alternatives a user has: pydicom.dcmread of the whole
header (stop_before_pixels, no tag list) and SimpleITK's ImageFileReader.ReadImageInformation,
each then reading the index's 12 tags.

    python benchmarks/bench_emr.py [--series 1000] [--images 300] [--dir /tmp/bench_emr]
        [--json PATH]
"""
import argparse
import contextlib
import io as io_
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # a checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, print_table, write_json  # noqa: E402

from deepem.emr.dicom_index import TAGS, index_dicom, read_header  # noqa: E402


def write_tree(root, n_series, n_images, seed=0):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(seed)
    pixels = rng.integers(-1000, 400, (32, 32)).astype("<i2").tobytes()
    for s in range(n_series):
        pid, year = str(100000 + s // 3), s % 3
        study, series = generate_uid(entropy_srcs=["study", str(s)]), generate_uid(entropy_srcs=["series", str(s)])
        folder = os.path.join(root, pid, study, series)
        os.makedirs(folder, exist_ok=True)
        for k in range(n_images):
            sop = generate_uid(entropy_srcs=[series, str(k)])
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, sop, "CT"
            ds.PatientID, ds.PatientName = pid, "%s^LSS" % pid
            ds.StudyDate, ds.StudyInstanceUID = ("19990102", "20000102", "20010102")[year], study
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 2, n_images - k
            ds.SeriesDescription = "0,OPA,GE,LSS,,B,2000,,,,"
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = [-180.0, -180.0, -350.0 + 2.5 * k]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
            ds.KVP, ds.ConvolutionKernel, ds.Manufacturer = 120, "STANDARD", "GE MEDICAL SYSTEMS"
            ds.Rows = ds.Columns = 32
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
            ds.PixelData = pixels
            ds.save_as(os.path.join(folder, "1-%03d.dcm" % (k + 1)), enforce_file_format=True)


def per_file(fn, paths):
    t0 = time.perf_counter()
    for p in paths:
        fn(p)
    return (time.perf_counter() - t0) / len(paths)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=100)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--dir", default=None, help="where the tree goes (default a temporary folder, removed)")
    ap.add_argument("--sample", type=int, default=2000, help="files timed for the per-file alternatives")
    ap.add_argument("--json")
    args = ap.parse_args()
    import pydicom
    import SimpleITK as sitk
    from pydicom.tag import Tag

    root = args.dir or tempfile.mkdtemp(prefix="bench_emr_")
    tree, cache = os.path.join(root, "dicom"), os.path.join(root, "cache")
    files = args.series * args.images
    try:
        t0 = time.perf_counter()
        if not os.path.isdir(tree):
            write_tree(tree, args.series, args.images)
        written = time.perf_counter() - t0
        rows, results = [], {}

        def record(name, seconds, n):
            results[name] = {"seconds": seconds, "files": n, "headers_per_s": n / seconds}
            rows.append([name, "%d" % n, "%.1f" % seconds, "%.0f" % (n / seconds),
                         "%.1f" % (seconds * 1000 * 300 / n)])

        for workers in (1, 2):
            shutil.rmtree(cache, ignore_errors=True)
            with contextlib.redirect_stderr(io_.StringIO()):
                t0 = time.perf_counter()
                index = index_dicom(tree, cache_dir=cache, workers=workers, progress=True)
                seconds = time.perf_counter() - t0
            assert index.files == files and len(index.series) == args.series
            record("deepem index_dicom, %d worker%s, no cache" % (workers, "s" if workers > 1 else ""), seconds, files)
        t0 = time.perf_counter()
        index = index_dicom(tree, cache_dir=cache)
        record("deepem index_dicom, rerun over its cache", time.perf_counter() - t0, files)
        assert index.read == 0
        paths = sorted(p for s in index.series.values() for *_, p in s.instances)
        sample = [paths[i] for i in np.linspace(0, len(paths) - 1, min(args.sample, len(paths))).astype(int)]
        ours = per_file(read_header, sample)
        def pydicom_whole(p):  # the whole header, then the same tags
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            return [ds.get(t) for t in TAGS]

        full = per_file(pydicom_whole, sample)
        keys = ["%04x|%04x" % (Tag(t).group, Tag(t).element) for t in TAGS]

        def sitk_info(p):
            reader = sitk.ImageFileReader()
            reader.SetFileName(p)
            reader.ReadImageInformation()
            return [reader.GetMetaData(k) for k in keys if reader.HasMetaDataKey(k)]

        itk = per_file(sitk_info, sample)
        for name, sec in (("per file: deepem read_header (its 12 tags, as text)", ours),
                          ("per file: pydicom.dcmread whole header, the 12 tags", full),
                          ("per file: SimpleITK ReadImageInformation, the 12 tags", itk)):
            record(name, sec * len(sample), len(sample))
        mc = machine()
        print("DICOM header index: %d series x %d images (%d files, written in %.0f s); 1 process unless said"
              % (args.series, args.images, files, written))
        print_table(["what", "files", "s", "headers/s", "s for 1000 x 300 images"], rows, left=(0,))
        print("Machine: %s, %d cores, Python %s, pydicom %s, SimpleITK %s."
              % (mc["cpu"], mc["cores"], sys.version.split()[0], pydicom.__version__, sitk.Version.VersionString()))
        payload = {"series": args.series, "images": args.images, "results": results, "machine": mc,
                   "pydicom": pydicom.__version__, "simpleitk": sitk.Version.VersionString()}
        if args.json:
            write_json(args.json, payload)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
