"""Free-text chest CT reports for phantom studies: the radiology-report side of the weak labels.

`write_report(rng, nodules, prior)` writes one study's report in one of several house styles
(drawn per study), naming every planted nodule with its lobe, image reference, size and
texture, and adding, at random, the sentences a real report has that are not current lung
nodules: a thyroid or adrenal nodule, a hepatic lesion, "no pulmonary nodules" when there are
none, a prior nodule that has resolved, a calcified granuloma. Written on its own, without the
extractor (deepem.emr.reports), so that reading these reports back tests the extractor.

A nodule is a dict: lobe (0..5 = right upper, right middle, right lower, left upper, lingula,
left lower), series and image (ints), diameter_mm (float) and texture ("solid", "part-solid" or
"ggo", as in nodules.TEXTURES). `prior` is the earlier study's list: a current nodule is the
prior one with the same "id" (or, without ids, the first prior one in the same lobe); a prior
nodule with no current one is reported as resolved.

Sizes are written with one decimal, in mm below 10 mm and in cm from 1 cm on, as reports do;
`written_diameter_mm` is that rounding. Two-axis sizes ("7.1 x 5.7 mm") have that mean.
"""
from __future__ import annotations

from typing import Optional

__all__ = ["STYLES", "write_report", "written_diameter_mm"]

STYLES = ("narrative", "lung_rads_list", "structured", "impression", "dictation", "uk")

_LOBE = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "lingula", "left lower lobe")
_LOBE_SHORT = ("RUL", "RML", "RLL", "LUL", "lingula", "LLL")
_SEGMENTS = (("apical", "posterior", "anterior"), ("lateral", "medial"),
             ("superior", "posterior basal", "lateral basal"), ("apicoposterior", "anterior"),
             ("superior lingular", "inferior lingular"), ("superior", "posterior basal", "lateral basal"))
_TEXTURE_WORDS = {"solid": ("solid", "solid", "soft tissue density"),
                  "part-solid": ("part-solid", "part solid", "mixed attenuation"),
                  "ggo": ("ground-glass", "nonsolid", "pure ground glass")}
_TEXTURE_TERSE = {"solid": "solid", "part-solid": "part-solid", "ggo": "GGO"}
_TEXTURE_FIELD = {"solid": "Solid", "part-solid": "Part-solid", "ggo": "Ground glass"}


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


# ---- sizes ---------------------------------------------------------------------------------

def written_diameter_mm(d: float) -> float:
    """The size a report gives for a nodule of diameter d mm: one decimal in mm below 1 cm,
    one decimal in cm from 1 cm on."""
    mm = round(d, 1)
    return mm if mm < 10 else round(round(d / 10, 1) * 10, 1)


def _size(rng, d: float, axes_ok: bool = True) -> str:
    """d as a report writes it; sometimes long x short axis with the same mean."""
    in_cm = round(d, 1) >= 10
    value = round(d / 10, 1) if in_cm else round(d, 1)
    unit = "cm" if in_cm else "mm"
    step = 0.1 if in_cm else 0.1 * int(rng.integers(2, 9))
    if axes_ok and rng.random() < 0.3 and value - step > 0.2:
        long_axis = round(value + step, 1)
        short_axis = round(2 * value - long_axis, 1)
        return f"{long_axis:.1f} x {short_axis:.1f} {unit}"
    return f"{value:.1f} {unit}"


def _plain_size(d: float) -> str:
    in_cm = round(d, 1) >= 10
    return f"{round(d / 10, 1):.1f} cm" if in_cm else f"{round(d, 1):.1f} mm"


# ---- references, places, comparisons -------------------------------------------------------

def _ref(rng, nod: dict, style: str) -> str:
    s, i = nod["series"], nod["image"]
    if style == "uk":
        return f"(image {i}, series {s})"
    if style == "dictation":
        return _pick(rng, (f"se {s} im {i}", f"{s}/{i}", f"S{s} I{i}"))
    return _pick(rng, (f"(series {s}, image {i})", f"({s}:{i})", f"(series {s} image {i})",
                       f"(image {i} of series {s})"))


def _place(rng, lobe: int) -> str:
    if rng.random() < 0.4:
        segment = _pick(rng, _SEGMENTS[lobe])
        if lobe == 4:
            return f"the {segment} segment of the left upper lobe"
        return f"the {segment} segment of the {_LOBE[lobe]}"
    return "the " + _LOBE[lobe]


def _match_prior(nodules: list, prior: Optional[list]) -> tuple[list, list]:
    """(the prior nodule of each current one or None, the prior nodules that are gone)."""
    if not prior:
        return [None] * len(nodules), []
    left = list(prior)
    matched = []
    for nod in nodules:
        same = [p for p in left if ("id" in nod and "id" in p and p["id"] == nod["id"])
                or ("id" not in nod or "id" not in p) and p["lobe"] == nod["lobe"]]
        matched.append(same[0] if same else None)
        if same:
            left.remove(same[0])
    return matched, left


def _comparison(rng, nod: dict, before: Optional[dict], prior_given: bool) -> tuple[str, str]:
    """The size as written, and a note on its history written after the image reference
    (", previously 5.1 mm", ", new since the prior study")."""
    now = _size(rng, nod["diameter_mm"], axes_ok=before is None)
    if before is None:
        return now, ", new since the prior study" if prior_given else ""
    was = _plain_size(before["diameter_mm"])
    if abs(written_diameter_mm(before["diameter_mm"]) - written_diameter_mm(nod["diameter_mm"])) < 0.05:
        return now, _pick(rng, (", stable", ", unchanged from the prior study"))
    change = "increased" if nod["diameter_mm"] > before["diameter_mm"] else "decreased"
    return now, _pick(rng, (f", previously {was}", f" (previously {was})", f", {change} from {was}"))


# ---- the sentences that are not current lung nodules ---------------------------------------

def _distractors(rng, nodules: list, gone: list) -> dict:
    """Sentences by section: lung (no nodules, resolved, granuloma), other organs."""
    lung, other = [], []
    if not nodules and rng.random() < 0.8:
        lung.append(_pick(rng, ("No pulmonary nodules.", "No new or enlarging nodules.",
                                "No suspicious pulmonary nodule is seen.", "The lungs are clear without nodules.")))
    for g in gone:
        lung.append(_resolved_sentence(rng, g["lobe"]))
    if not gone and rng.random() < 0.25:
        lung.append(_resolved_sentence(rng, int(rng.integers(6))))
    if rng.random() < 0.3:
        lobe = _LOBE[int(rng.integers(6))]
        lung.append(_pick(rng, (f"Stable calcified granuloma in the {lobe}.",
                                f"A densely calcified granuloma in the {lobe} is unchanged.")))
    if rng.random() < 0.3:
        other.append(_pick(rng, ("Incidental 1.4 cm nodule in the right lobe of the thyroid.",
                                 "A 1.1 cm hypodense left thyroid nodule is noted.")))
    if rng.random() < 0.3:
        other.append(_pick(rng, ("A 9 mm hypodense lesion in the liver is too small to characterize.",
                                 "Hepatic hypodensity measuring 8 mm, likely a cyst.")))
    if rng.random() < 0.2:
        other.append("Left adrenal nodule measuring 1.3 cm, likely an adenoma.")
    return dict(lung=lung, other=other)


def _resolved_sentence(rng, lobe: int) -> str:
    return _pick(rng, (f"Previously seen {_LOBE[lobe]} nodule has resolved.",
                       f"The {_LOBE_SHORT[lobe]} nodule seen on the prior study is no longer visualized.",
                       f"Interval resolution of the previously noted {_LOBE[lobe]} nodule."))


# ---- the styles ----------------------------------------------------------------------------

def _narrative(rng, nodules, history, extra, uk=False) -> str:
    lines = ["FINDINGS:" if not uk else "Findings:"]
    said = []
    for k, (nod, (size, note)) in enumerate(zip(nodules, history)):
        texture = _pick(rng, _TEXTURE_WORDS[nod["texture"]])
        ref = _ref(rng, nod, "uk" if uk else "narrative")
        place = _place(rng, nod["lobe"])
        said.append(_pick(rng, (
            f"There is a {size} {texture} nodule in {place} {ref}{note}.",
            f"{'Additionally, a' if k else 'A'} {texture} nodule in {place} measures {size} {ref}{note}.",
            f"In {place}, there is a {texture} nodule measuring {size} {ref}{note}.")))
    lines.append("Lungs: " + " ".join(said + extra["lung"]) if said or extra["lung"] else "Lungs: Clear.")
    if extra["other"]:
        lines.append("Other: " + " ".join(extra["other"]))
    lines += ["", "IMPRESSION:" if not uk else "Conclusion:"]
    if nodules:
        nod = nodules[0]
        lines.append(f"{_plain_size(nod['diameter_mm'])} {_LOBE[nod['lobe']]} nodule, follow-up as per guidelines.")
    else:
        lines.append("No suspicious pulmonary nodule.")
    return "\n".join(lines)


def _lung_rads_list(rng, nodules, history, extra) -> str:
    lines = ["LOW-DOSE CT LUNG CANCER SCREENING", "", "Nodules:"]
    for k, (nod, (size, note)) in enumerate(zip(nodules, history), 1):
        where = _pick(rng, (_LOBE_SHORT[nod["lobe"]], _LOBE[nod["lobe"]].capitalize()))
        texture = _pick(rng, _TEXTURE_WORDS[nod["texture"]])
        lines.append(f"{k}. {where}, {size}, {texture}, series {nod['series']} image {nod['image']}{note}.")
    if not nodules:
        lines.append("None.")
    if extra["lung"] or extra["other"]:
        lines += ["", "Other findings:"] + [f"- {s}" for s in extra["lung"] + extra["other"]]
    lines += ["", f"Lung-RADS category: {_pick(rng, ('2', '3', '4A')) if nodules else '1'}"]
    return "\n".join(lines)


def _structured(rng, nodules, history, extra) -> str:
    lines = ["PULMONARY NODULES:"]
    for k, (nod, (size, note)) in enumerate(zip(nodules, history), 1):
        lines += ["", f"Nodule {k}", f"Location: {_pick(rng, (_LOBE_SHORT[nod['lobe']], _LOBE[nod['lobe']]))}",
                  f"Size: {size}{note}", f"Series/Image: {nod['series']}/{nod['image']}",
                  f"Type: {_TEXTURE_FIELD[nod['texture']]}"]
    if not nodules:
        lines += ["", "No pulmonary nodules identified."]
    if extra["lung"] or extra["other"]:
        lines += ["", "ADDITIONAL FINDINGS:", " ".join(extra["lung"] + extra["other"])]
    return "\n".join(lines)


def _impression(rng, nodules, history, extra) -> str:
    items = []
    for nod, (size, note) in zip(nodules, history):
        texture = _pick(rng, _TEXTURE_WORDS[nod["texture"]])
        items.append(f"{size} {texture} nodule in {_place(rng, nod['lobe'])} {_ref(rng, nod, 'impression')}{note}.")
    items += extra["lung"] + extra["other"]
    if not items:
        items = ["No acute cardiopulmonary abnormality."]
    return "\n".join(["IMPRESSION:"] + [f"{k}. {s[0].upper() + s[1:]}" for k, s in enumerate(items, 1)])


def _dictation(rng, nodules, history, extra) -> str:
    parts = ["CT chest low dose."]
    for nod, (size, note) in zip(nodules, history):
        parts.append(f"{_LOBE_SHORT[nod['lobe']]} {size.replace(' mm', 'mm')} {_TEXTURE_TERSE[nod['texture']]} "
                     f"nodule {_ref(rng, nod, 'dictation')}{note.replace(' mm', 'mm')}.")
    if nodules and rng.random() < 0.5:
        parts.append("No other nodules.")
    parts += extra["lung"] + extra["other"]
    return " ".join(parts)


def write_report(rng, nodules: list, prior: Optional[list] = None) -> str:
    """One study's free-text report (see the module's docstring); the style drawn from rng."""
    style = STYLES[int(rng.integers(len(STYLES)))]
    before, gone = _match_prior(nodules, prior)
    history = [_comparison(rng, nod, b, prior is not None) for nod, b in zip(nodules, before)]
    extra = _distractors(rng, nodules, gone)
    if style in ("narrative", "uk"):
        return _narrative(rng, nodules, history, extra, uk=style == "uk")
    return {"lung_rads_list": _lung_rads_list, "structured": _structured, "impression": _impression,
            "dictation": _dictation}[style](rng, nodules, history, extra)
