"""A record's image reference -> a series and a world z, through the DICOM index.

Records name an image by its InstanceNumber (NLST's `sct_slice_num`, a report's "image 45"),
which is looked up among the series' instances, never used as an array index: NLST numbers
images head to feet while a volume sorted by position runs feet to head.

Every label of an exam goes to one series, its *target*: the series named by an image info
table when one is given, else the thinnest axial series (ties: more images, then the lower
SeriesNumber, then the uid). A reference may name another reconstruction of the exam: its
instance's world z is then placed in the target by position. Where several axial series hold
the instance number and put it more than a slice thickness apart, the row is ambiguous, unless
the policy `thinnest` (trust the thinnest of them) resolves it.
"""
from dataclasses import dataclass

POLICIES = ("strict", "thinnest")


@dataclass(frozen=True)
class Placement:
    series_uid: str
    z: float  # world z (mm) of the referenced instance
    slice: int  # 0-based slice index of that z in the target series, as deepem reads the volume


def _rank(s):
    return (s.thickness(), -len(s.instances), s.series_number if s.series_number is not None else 1 << 30,
            s.series_uid)


def target_series(axial):
    return min(axial, key=_rank)


def _kinds(series):
    return ", ".join("%s %s" % (s.series_number, s.kind()) for s in sorted(series, key=_rank))


def place(study, image, series_number=None, reference=None, policy="strict"):
    """(Placement, None) or (None, (reason, detail)) for instance number `image` of the exam
    whose series are `study`; `series_number` restricts the lookup to that series,
    `reference` (a set of series uids) to the series an image info table names."""
    if policy not in POLICIES:
        raise ValueError("series policy must be one of %s, got %r" % (", ".join(POLICIES), policy))
    if not study:
        return None, ("no_study", "no DICOM series of this exam in the index")
    axial = [s for s in study if s.kind() == "axial"]
    if not axial:
        return None, ("no_axial_series", "series (number kind): %s" % _kinds(study))
    if reference:
        pool = [s for s in axial if s.series_uid in reference]
        if not pool:
            return None, ("series_not_found", "the image info table names %s, no axial series of this exam"
                          % ", ".join(sorted(reference)))
        target = target_series(pool)
    else:
        target = target_series(axial)
        pool = axial
        if series_number is not None:
            named = [s for s in study if s.series_number == series_number]
            if not named:
                return None, ("series_not_found", "no series %d in this exam (series: %s)"
                              % (series_number, _kinds(study)))
            pool = [s for s in named if s.kind() == "axial"]
            if not pool:
                return None, ("no_axial_series", "series %d is %s" % (series_number, _kinds(named)))
    hits = [(s, s.lookup(image)) for s in pool]
    hits = [(s, found) for s, found in hits if found is not None]
    if not hits:
        ranges = "; ".join("series %s: %s..%s" % (s.series_number, min(n for n, *_ in s.instances),
                                                  max(n for n, *_ in s.instances)) for s in pool)
        return None, ("slice_out_of_range", "image %d is no instance of the exam's axial series (%s)" % (image, ranges))
    zs = [z for _, (_, z) in hits]
    if max(zs) - min(zs) > max(s.thickness() for s, _ in hits):
        if policy != "thinnest":
            where = ", ".join("z %.2f in series %s" % (z, s.series_number) for s, (_, z) in hits)
            return None, ("ambiguous_series", "image %d lies at %s, more than a slice thickness apart; an image "
                          "info table or --series-policy thinnest resolves it" % (image, where))
        hits = [min(hits, key=lambda h: _rank(h[0]))]
    own = [found for s, found in hits if s is target]
    if own:
        k, z = own[0]
        return Placement(target.series_uid, float(z), int(k)), None
    z = min(hits, key=lambda h: _rank(h[0]))[1][1]
    k = target.nearest_slice(z)
    if k is None:
        return None, ("slice_out_of_range", "image %d (z %.2f) lies outside the target series %s" %
                      (image, z, target.series_number))
    return Placement(target.series_uid, float(z), int(k)), None
