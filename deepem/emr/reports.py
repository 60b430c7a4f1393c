"""Findings of free-text chest CT reports: which pulmonary nodules a report names, in which
lobe, on which image, how large and of which texture; the weak labels that a report gives.

No model and no download: regular expressions find the parts of a mention (lobe, image
reference, size, texture, the word "nodule" or its kin), and a small ConText-style rule set
(trigger phrases with a direction and a scope, pseudo-triggers, terminators; Harkema et al.
2009) decides which mentions are not current pulmonary nodules: negated ("no new nodules"),
resolved ("previously seen RUL nodule has resolved"), of another organ ("right lobe thyroid
nodule"), benign calcified ("calcified granuloma") or hypothetical (guideline text).
medspaCy's ConText was the first choice, but medspaCy 1.3.1 (and PyRuSH, its sentence splitter)
pin spaCy < 3.8 on Python < 3.12, whose thinc < 8.3 needs numpy < 2: installing it would
downgrade this project's numpy 2, and with numpy 2 kept thinc fails to import ("numpy.dtype
size changed, may indicate binary incompatibility"). Its default rules would not have sufficed
either: they leave "previously seen RUL nodule has resolved" current. Standard library only.

How a report is read:
1. `_segments`: lines become sentences, list items and structured records (`Location: RUL`,
   `Size: 6 mm`, ...), each with the context of its section heading (`Nodules:` makes the
   items of a list nodule mentions; `Thyroid:` makes them another organ's).
2. `_attributes`: the parts of mentions in a segment, with their character spans.
3. `_groups`: the parts become nodules. A segment is cut into chunks at commas, semicolons and
   "and" (outside parentheses and outside an image reference); a new nodule starts at a chunk
   with its own "nodule" word or where a lobe, size or reference would be given twice, so
   "6 mm RUL nodule (3:45) and 4 mm LLL nodule (3:88)" is two nodules and "nodules in the RUL
   (3:45) and LLL (3:88)" too, both sharing the one plural "nodules".
4. `_status`: the triggers around each nodule's word give its status.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Optional

__all__ = ["Finding", "LOBE_NAMES", "STATUSES", "TEXTURES", "extract_findings", "extract_mentions"]

LOBE_NAMES = ("right upper lobe", "right middle lobe", "right lower lobe", "left upper lobe", "lingula",
              "left lower lobe")
RUL, RML, RLL, LUL, LINGULA, LLL = range(6)
TEXTURES = ("solid", "part_solid", "ground_glass", "")
STATUSES = ("current", "negated", "resolved", "non_pulmonary", "calcified", "hypothetical")


@dataclass(frozen=True)
class Finding:
    """One nodule mention of a report."""
    lobe: int                      # 0..5 (LOBE_NAMES); -1 when the text names no single lobe
    series: Optional[int]          # series number of the image reference
    image: Optional[int]           # image (instance) number
    diameter_mm: Optional[float]   # current size; two axes -> their mean (Lung-RADS)
    texture: str                   # one of TEXTURES ("" unknown)
    status: str                    # "current", else why it is no label (STATUSES)
    text: str                      # the sentence, list item or record it came from


def extract_mentions(text: str) -> list[Finding]:
    """Every nodule mention of a report, in text order, with its status."""
    mentions: list[Finding] = []
    for seg in _segments(text):
        found = _mentions_of(seg)
        if seg.continues and mentions and found:
            # "It measures 6 mm (3:45)." completes the nodule of the sentence before.
            mentions[-1] = _fill_from(mentions[-1], found[0], take_status=True)
        elif not seg.continues:
            mentions.extend(found)
    return mentions


def extract_findings(text: str) -> list[Finding]:
    """The current pulmonary nodules of a report, in order of first mention. A nodule named
    twice (findings and impression) is given once, its attributes merged."""
    return _merge_repeats([m for m in extract_mentions(text) if m.status == "current"])


# ----------------------------------------------------------------------------------------------
# 1. Segments: sentences, list items, structured records
# ----------------------------------------------------------------------------------------------

@dataclass
class _Segment:
    text: str
    implicit_anchor: bool = False   # a record, an item of a nodule list, or a continuation
    organ_heading: bool = False     # under a heading of another organ (Thyroid:, Upper abdomen:)
    continues: bool = False         # "It measures ..." adds to the nodule named just before


_FIELD = re.compile(
    r"^\s*(?P<key>location|lobe|site|size|diameter|mean\s+diameter|dimensions?|measurements?|"
    r"series\s*/\s*image|se\s*/\s*im|series|image|slice|image\s+number|type|texture|attenuation|"
    r"composition|density|consistency|status|character|margins?|morphology)\s*(?P<unit>\((?:mm|cm)\))?\s*#?\s*:", re.I)
_FIELD_ANYWHERE = re.compile(r"\b(?:location|lobe|size|diameter|series\s*/\s*image|image|type|attenuation|"
                             r"composition)\s*:", re.I)
_RECORD_HEADER = re.compile(r"^\s*(?i:nodule|lesion|finding)\s*#?\s*(?:\d+|(?<=\s)[A-Z])\s*[:.)-]?\s*$")
_HEADING = re.compile(r"^\s*(?P<head>[A-Za-z][A-Za-z ,/&()'-]{0,40}?)\s*:\s*(?P<rest>.*)$")
_TITLE = re.compile(r"^[A-Z][A-Z /&,()'-]{2,60}$")
_ITEM = re.compile(r"^\s*(?:\d{1,2}[.)]|[-*\u2022\u00b7]|\(?[a-hA-H][.)])\s+")
_CONTINUATION = re.compile(r"^\s*(?:it|this|which|they|these)\b", re.I)
_ABBREVIATION_END = re.compile(r"\b(?:approx|appr|img|im|ser|se|no|nos|vs|e\.g|i\.e|dr|fig|cf|st|mr|ms)\.$", re.I)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[A-Za-z0-9(\[\"'])")


def _segments(text: str) -> list[_Segment]:
    reader = _Reader()
    for line in text.splitlines():
        reader.feed(line)
    reader.flush()
    return reader.segments


class _Reader:
    """Reads a report line by line; keeps the section heading and the open paragraph, list
    item or record, and turns each closed one into segments."""

    def __init__(self):
        self.segments: list[_Segment] = []
        self.heading = ""
        self.prose: list[str] = []
        self.item: list[str] = []
        self.record: list[str] = []
        self.record_keys: set[str] = set()

    def feed(self, line: str):
        s = line.strip()
        if not s:
            self.flush()
            return
        if _RECORD_HEADER.match(s):
            self.flush()
            self.record = [s]
            return
        f = _FIELD.match(s)
        if f:
            key = re.sub(r"\s+", " ", f.group("key").lower())
            self._close_prose()
            if key in self.record_keys:          # a key again: the next nodule's record
                self._close_record()
            self.record.append(_unit_into_value(s, f))
            self.record_keys.add(key)
            return
        self._close_record()
        if _TITLE.match(s):                       # "PULMONARY NODULES", "FINDINGS"
            self.flush()
            self.heading = s
            return
        h = _HEADING.match(s)
        heading_like = h and len(h.group("head").split()) <= 5 and not _ITEM.match(s)
        if heading_like and not h.group("rest"):
            self.flush()
            self.heading = h.group("head")
            return
        if _ITEM.match(s):
            self._close_prose()
            item = _ITEM.sub("", s, count=1)
            if len(_FIELD_ANYWHERE.findall(item)) >= 2:   # "1. Location: RML. Size: 4.6 mm. ..."
                self.segments.append(_Segment(item, implicit_anchor=True, **self._context()))
            else:
                self.item = [item]
            return
        if heading_like:                          # "Lungs: There is ..." keeps its heading text
            self.flush()
            self.heading = h.group("head")
            self.prose = [s]
            return
        (self.item if self.item else self.prose).append(s)

    def flush(self):
        self._close_prose()
        self._close_record()

    def _context(self) -> dict:
        return dict(organ_heading=bool(_ORGAN.search(self.heading)))

    def _close_prose(self):
        for lines, is_item in ((self.prose, False), (self.item, True)):
            if not lines:
                continue
            sentences = _split_sentences(" ".join(lines))
            list_of_nodules = is_item and bool(_ANCHOR.search(self.heading))
            for k, sentence in enumerate(sentences):
                continues = k > 0 and bool(_CONTINUATION.match(sentence))
                self.segments.append(_Segment(sentence, implicit_anchor=(list_of_nodules and k == 0) or continues,
                                              continues=continues, **self._context()))
        self.prose, self.item = [], []

    def _close_record(self):
        if self.record:
            self.segments.append(_Segment("  ".join(self.record), implicit_anchor=True, **self._context()))
        self.record, self.record_keys = [], set()


def _unit_into_value(line: str, field_match) -> str:
    """"Size (mm): 7 x 6" -> "Size: 7 x 6 mm"."""
    unit = field_match.group("unit")
    if not unit:
        return line
    return f"{field_match.group('key')}: {line[field_match.end():].strip()} {unit.strip('()')}"


def _split_sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_BREAK.finditer(text):
        if _ABBREVIATION_END.search(text[start:m.start()]):
            continue
        out.append(text[start:m.start()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


# ----------------------------------------------------------------------------------------------
# 2. Attributes: the parts of a mention, found by regular expressions
# ----------------------------------------------------------------------------------------------

@dataclass
class _Attr:
    kind: str            # anchor, lobe, size, ref, texture, organ, calcified
    start: int
    end: int
    value: object = None
    plural: bool = False
    is_mean: bool = False  # a size given as the "mean diameter" replaces the other size


# The word that makes a mention: nodule and its kin. "lesion" and plain "opacity" are left out
# (hepatic lesions, consolidation); "granuloma" is a mention whose status is "calcified".
_ANCHOR = re.compile(
    r"\b(?:micro)?nodules?\b|\bnods?\b\.?|\bnodular\s+(?:opacit(?:y|ies)|densit(?:y|ies)|foc(?:us|i))\b"
    r"|\bground[- ]?glass\s+(?:opacit(?:y|ies)|foc(?:us|i)|lesions?)\b|\bfoc(?:us|i)\s+of\s+ground[- ]?glass\b"
    r"|\bGG[ON]s?\b|\bmass(?:es)?\b(?!\s+effect)|\bgranulomas?\b", re.I)
_PLURAL_WORD = re.compile(r"(?:nodules|nods|opacities|densities|foci|GG[ON]s|masses|granulomas)\b\.?$", re.I)

_NUM = r"(?:\d+(?:\.\d+)?|\.\d+)"
_UNIT = r"(?:mm|millimet(?:er|re)s?|cm|centimet(?:er|re)s?)"
_UNIT_END = r"(?![\w^\u00b2\u00b3])"
_SIZE_CHANGE = re.compile(
    rf"\bfrom\s+{_NUM}\s*(?:{_UNIT})?\s*(?:to|->|\u2192)\s*(?P<cur>{_NUM})\s*-?\s*(?P<unit>{_UNIT}){_UNIT_END}"
    rf"|(?<![\w.]){_NUM}\s*(?:{_UNIT})?\s*(?:->|\u2192)\s*(?P<cur2>{_NUM})\s*-?\s*(?P<unit2>{_UNIT}){_UNIT_END}", re.I)
_SIZE_RANGE = re.compile(
    rf"(?<![\w.])(?P<lo>{_NUM})\s*(?:-|\u2013|to)\s*(?P<hi>{_NUM})\s*-?\s*(?P<unit>{_UNIT}){_UNIT_END}", re.I)
_SIZE = re.compile(
    rf"(?<![\w.])(?P<a>{_NUM})(?:\s*{_UNIT})?(?:\s*(?:x|\u00d7|\*|by)\s*(?P<b>{_NUM})(?:\s*{_UNIT})?)?"
    rf"(?:\s*(?:x|\u00d7|\*|by)\s*{_NUM})?\s*-?\s*(?P<unit>{_UNIT}){_UNIT_END}", re.I)
# A size that is not the nodule's current size: a prior one, a change, a solid component, a
# distance or a slice thickness. Checked on the text just before and just after the size.
_PRIOR_BEFORE = re.compile(
    r"(?:previously|prior(?:ly)?|formerly|was|were|then|baseline|earlier|compared\s+(?:to|with)|from|"
    r"vs\.?|versus|last)\s*(?:measur\w*|of|at|:)?\s*(?:approximately|approx\.?|about|~)?\s*$", re.I)
_PRIOR_AFTER = re.compile(
    r"^\s*(?:(?:on|in|at)\s+(?:the\s+)?(?:prior|previous|comparison|baseline|last|earlier|(?:19|20)\d\d|"
    r"\d{1,2}/\d{1,2})\b"
    r"|previously\b(?!\s*(?:measur\w*\s*)?\d)|prior\b(?!\s*\d)|at\s+baseline\b)", re.I)
_NOT_SIZE_BEFORE = re.compile(
    r"(?:\bby|\b(?:increase|growth|enlargement|decrease)\s+(?:of|by)|\b(?:increased|grown|enlarged|decreased|"
    r"grew)|\bwithin|\bthickness(?:\s+of)?|\bslices?(?:\s+of)?|\bcollimation(?:\s+of)?|\bcomponent|\bportion|"
    r"\bcore)\s*(?:of|measuring|measures|measured|which\s+measures|:)?\s*(?:approximately|approx\.?|about|~)?\s*$",
    re.I)
_NOT_SIZE_AFTER = re.compile(
    r"^\s*(?:(?:thick|slices?|sections?|images?)\b(?![\s:#]*(?:no\.?)?[\s:#]*\d)|collimation|intervals?|increments?|"
    r"reconstructions?|cuts?|"
    r"from\s+the|(?:of\s+)?(?:interval\s+)?(?:growth|increase|enlargement)|larger|smaller|bigger|"
    r"(?:\w+\s+)?(?:solid\s+)?(?:component|portion|core)\b)", re.I)
_COMPONENT_BEFORE = re.compile(r"\b(?:component|portion|core)\b(?:\s+\w+){0,3}\s*$", re.I)
_MEAN_BEFORE = re.compile(r"\b(?:mean|average)\s*(?:diameter|size)?\s*(?:of|:)?\s*$", re.I)

_SERIES = r"(?:series|ser\.?|se\.?|sr\.?)"
_IMAGE = r"(?:images?|imgs?\.?|im\.?|slices?|instances?)"
_KEY_GAP = r"\s*(?:#|no\.?|number)?\s*:?\s*"
_IMG_NUM = r"(?P<i>\d{1,4})(?:\s*[-\u2013]\s*(?P<i2>\d{1,4}))?(?!\.?\d|\s*(?:mm|cm))"
_REFS = [  # earlier patterns win where they overlap
    re.compile(rf"\b{_SERIES}{_KEY_GAP}(?P<s>\d{{1,3}})\s*[,;/]?\s*(?:and\s+)?(?:(?:axial|coronal|sagittal)\s+)?"
               rf"{_IMAGE}{_KEY_GAP}{_IMG_NUM}", re.I),
    re.compile(rf"\b{_IMAGE}{_KEY_GAP}{_IMG_NUM}\s*(?:,|of|on|in|/)?\s*\(?\s*{_SERIES}{_KEY_GAP}(?P<s>\d{{1,3}})\)?",
               re.I),
    re.compile(rf"\b(?:{_SERIES}\s*/\s*{_IMAGE}|s/i)\s*[:#]?\s*(?P<s>\d{{1,3}})\s*[/:]\s*(?P<i>\d{{1,4}})\b", re.I),
    re.compile(r"\bS(?P<s>\d{1,3})\s*[/,]?\s*I(?P<i>\d{1,4})\b"),
    re.compile(r"[(\[]\s*(?P<s>\d{1,3})\s*[:;/]\s*(?P<i>\d{1,4})\s*(?=[)\],])"),
    re.compile(r"(?<![\d/.:])(?P<s>\d{1,2})\s*/\s*(?P<i>\d{1,4})(?![\d/]|\.\d)"),
    re.compile(rf"\b(?:(?:axial|coronal|sagittal|key)\s+)?{_IMAGE}{_KEY_GAP}{_IMG_NUM}", re.I),
]

_LOBE_SPELLED = re.compile(
    r"\b(?P<side>right|left|rt\.?|lt\.?)\s+(?P<level>upper|middle|mid|lower)\b(?:\s*(?:lobes?|lung|zone)\b)?"
    r"(?!\s+(?:quadrant|pole|extremit|abdomen|arm|leg|thigh|neck|paratracheal))", re.I)
_LOBE_LETTER = re.compile(r"\b(?P<side>[RL])\.?\s+(?P<level>upper|middle|lower)\s+lobe\b", re.I)
_LOBE_ABBR = re.compile(r"\b(?P<abbr>RUL|RML|RLL|LUL|LLL)\b")
_LOBE_MIDDLE = re.compile(r"\bmiddle\s+lobes?\b", re.I)
_LOBE_LINGULA = re.compile(r"\blingula(?:r)?\b", re.I)
_LOBE_APEX_BASE = re.compile(
    r"\b(?P<side>right|left)\s+(?:lung\s+)?(?P<where>apex|apical|base|basilar|basal)\b"
    r"|\b(?P<where2>apex|base)\s+of\s+the\s+(?P<side2>right|left)\s+lung\b", re.I)
_LOBE_APICOPOSTERIOR = re.compile(r"\bapicoposterior\b", re.I)
_LOBE_OF_ABBR = {"RUL": RUL, "RML": RML, "RLL": RLL, "LUL": LUL, "LLL": LLL}
_LOBE_OF_LEVEL = {("right", "upper"): RUL, ("right", "middle"): RML, ("right", "mid"): RML,
                  ("right", "lower"): RLL, ("left", "upper"): LUL, ("left", "lower"): LLL}

_TEXTURE = re.compile(
    r"\bpart(?:ly|ially)?[- ]?solid\b|\bsemi-?solid\b|\bnon-?solid\b|\bsub-?solid\b"
    r"|\bsolid\s+(?:component|portion|core|part)\b|\bmixed(?:[- ](?:attenuation|density))?\b"
    r"|\bground[- ]?glass\b|\bGG[ON]s?\b|\bsoft[- ]tissue(?:\s+(?:attenuation|density))?\b|\bsolid\b", re.I)
_ORGAN = re.compile(
    r"\b(?:thyroid|hepatic|liver|adrenals?|renal|kidneys?|breasts?|splenic|spleen|pancrea\w*|gallbladder|"
    r"subcutaneous|cutaneous|skin|axillary|mediastinal|esophag\w*|osseous|vertebral|abdomen|abdominal|"
    r"gastric|stomach|ovar\w*|uter\w*|prostat\w*|parotid|scalp)\b", re.I)
_NEAR_ORGAN = re.compile(r"\b(?:adjacent\s+to|abutting|abuts|near|next\s+to|along|contacting|touching|"
                         r"bordering|toward|towards|above|below|overlying)\s+(?:the\s+)?(?:\w+\s+)?$", re.I)
_CALCIFIED = re.compile(r"\bcalcifi(?:ed|cations?|c)\b", re.I)
_NOT_CALCIFIED_BEFORE = re.compile(r"(?:\bnon-?|\bno\s+|\bwithout\s+|\bnot\s+)$", re.I)

# Separators between the chunks of a segment (outside parentheses and outside a reference).
_SEPARATOR = re.compile(r",|;|\band\b|\bas\s+well\s+as\b|\bplus\b", re.I)


def _attributes(text: str) -> list[_Attr]:
    """The parts of the mentions of a segment, in text order (a word before the parts that
    start with it)."""
    refs = _find_refs(text)
    sizes = _find_sizes(text, taken=refs)
    attrs = refs + sizes + _find_lobes(text)
    attrs += _find_anchors(text)
    attrs += [_Attr("texture", m.start(), m.end(), _texture_cue(m.group(0))) for m in _TEXTURE.finditer(text)]
    attrs += [_Attr("organ", m.start(), m.end()) for m in _ORGAN.finditer(text)
              if not _NEAR_ORGAN.search(text[max(0, m.start() - 40):m.start()])]
    attrs += [_Attr("calcified", m.start(), m.end()) for m in _CALCIFIED.finditer(text)
              if not _NOT_CALCIFIED_BEFORE.search(text[max(0, m.start() - 10):m.start()])]
    return sorted(attrs, key=lambda a: (a.start, a.kind != "anchor"))


def _find_anchors(text: str) -> list[_Attr]:
    """The "nodule" words; two side by side are one ("GGO nodule")."""
    anchors: list[_Attr] = []
    for m in _ANCHOR.finditer(text):
        word = _Attr("anchor", m.start(), m.end(), m.group(0), plural=bool(_PLURAL_WORD.search(m.group(0))))
        if anchors and not text[anchors[-1].end:m.start()].strip(" -"):
            first = anchors.pop()
            word = replace(word, start=first.start, value=text[first.start:m.end()])
        anchors.append(word)
    return anchors


def _overlaps(a0: int, a1: int, spans) -> bool:
    return any(a0 < s.end and s.start < a1 for s in spans)


def _find_refs(text: str) -> list[_Attr]:
    """Image references: (series or None, image)."""
    found: list[_Attr] = []
    for pattern in _REFS:
        for m in pattern.finditer(text):
            if _overlaps(m.start(), m.end(), found):
                continue
            groups = m.groupdict()
            series = int(groups["s"]) if groups.get("s") else None
            image = int(groups["i"])
            if groups.get("i2"):                      # "images 45-48": the middle one
                image = (image + int(groups["i2"])) // 2
            if series is not None and series <= 12 and 1900 <= image <= 2099 and "/" in m.group(0):
                continue                              # a date (month/year), not series/image
            found.append(_Attr("ref", m.start(), m.end(), (series, image)))
    return found


def _mm(value: str, unit: str) -> float:
    return float(value) * (10.0 if unit.lower().startswith("c") else 1.0)


def _find_sizes(text: str, taken: list[_Attr]) -> list[_Attr]:
    """The current sizes: "from 4 to 6 mm" is 6, "5-6 mm" 5.5, "6 x 4 mm" 5. A prior size, a
    change, a solid component, a distance or a slice thickness is none. A rejected change or
    range keeps its span, so that its numbers are not read again as a plain size."""
    found: list[_Attr] = []
    taken = list(taken)
    for m in _SIZE_CHANGE.finditer(text):             # "from 4 to 6 mm": the current size
        if _COMPONENT_BEFORE.search(text[max(0, m.start() - 40):m.start()]):
            taken.append(_Attr("size", m.start(), m.end()))
            continue
        cur, unit = (m.group("cur"), m.group("unit")) if m.group("cur") else (m.group("cur2"), m.group("unit2"))
        found.append(_Attr("size", m.start(), m.end(), round(_mm(cur, unit), 2)))
    for m in _SIZE_RANGE.finditer(text):
        if _overlaps(m.start(), m.end(), found + taken):
            continue
        if _COMPONENT_BEFORE.search(text[max(0, m.start() - 40):m.start()]):
            taken.append(_Attr("size", m.start(), m.end()))
        else:
            mean = (float(m.group("lo")) + float(m.group("hi"))) / 2
            found.append(_Attr("size", m.start(), m.end(), round(_mm(str(mean), m.group("unit")), 2)))
    for m in _SIZE.finditer(text):
        if _overlaps(m.start(), m.end(), found + taken):
            continue
        before, after = text[max(0, m.start() - 40):m.start()], text[m.end():m.end() + 40]
        if _PRIOR_BEFORE.search(before) or _PRIOR_AFTER.match(after):
            continue
        if _NOT_SIZE_BEFORE.search(before) or _NOT_SIZE_AFTER.match(after):
            continue
        axes = [float(m.group("a"))] + ([float(m.group("b"))] if m.group("b") else [])
        value = _mm(str(sum(axes) / len(axes)), m.group("unit"))
        found.append(_Attr("size", m.start(), m.end(), round(value, 2), is_mean=bool(_MEAN_BEFORE.search(before))))
    return found


def _find_lobes(text: str) -> list[_Attr]:
    found: list[_Attr] = []

    def add(m, lobe):
        if not _overlaps(m.start(), m.end(), found):
            found.append(_Attr("lobe", m.start(), m.end(), lobe))

    for m in _LOBE_SPELLED.finditer(text):
        side = "right" if m.group("side").lower().startswith("r") else "left"
        lobe = _LOBE_OF_LEVEL.get((side, m.group("level").lower()))
        if lobe is not None:
            add(m, lobe)
    for m in _LOBE_LETTER.finditer(text):
        side = "right" if m.group("side").lower() == "r" else "left"
        lobe = _LOBE_OF_LEVEL.get((side, m.group("level").lower()))
        if lobe is not None:
            add(m, lobe)
    for m in _LOBE_ABBR.finditer(text):
        add(m, _LOBE_OF_ABBR[m.group("abbr")])
    for m in _LOBE_MIDDLE.finditer(text):
        add(m, RML)
    for m in _LOBE_LINGULA.finditer(text):
        add(m, LINGULA)
    for m in _LOBE_APICOPOSTERIOR.finditer(text):
        add(m, LUL)
    _add_distributed_sides(text, found)
    for m in _LOBE_APEX_BASE.finditer(text):
        side = (m.group("side") or m.group("side2")).lower()
        where = (m.group("where") or m.group("where2")).lower()
        add(m, _LOBE_OF_LEVEL[(side, "upper" if where.startswith("ap") else "lower")])
    return _join_lobe_phrases(text, sorted(found, key=lambda a: a.start))


_LOBE_GAP = re.compile(r"^[\s()]*(?:[A-Za-z-]+[\s()]+){0,3}$")  # "segment of the", " (", nothing


_LEVEL_ONLY = re.compile(r"\b(?P<level>upper|lower)\s+lobes?\b", re.I)
_SIDE_ONLY = re.compile(r"\b(?P<side>right|left)\b(?=\s*[:,]?\s*\d)", re.I)  # "right 5 mm"


def _add_distributed_sides(text: str, found: list[_Attr]):
    """"Bilateral lower lobe nodules: right 5 mm (4:190), left 6 mm (4:202)": a lobe level named
    without a side gives its level to the bare sides that follow it."""
    for level in _LEVEL_ONLY.finditer(text):
        if _overlaps(level.start(), level.end(), found):
            continue
        for side in _SIDE_ONLY.finditer(text, level.end()):
            if not _overlaps(side.start(), side.end(), found):
                lobe = _LOBE_OF_LEVEL[(side.group("side").lower(), level.group("level").lower())]
                found.append(_Attr("lobe", side.start(), side.end(), lobe))
        return


def _join_lobe_phrases(text: str, lobes: list[_Attr]) -> list[_Attr]:
    """One place named twice is one lobe: "left upper lobe lingular segment" is the lingula,
    "apicoposterior segment of the left upper lobe" and "right upper lobe (RUL)" one lobe."""
    out: list[_Attr] = []
    for a in lobes:
        if out:
            prev = out[-1]
            gap = text[prev.end:a.start]
            same_place = prev.value == a.value or {prev.value, a.value} == {LUL, LINGULA}
            # "left upper lobe, lingular segment"
            lingular_segment = text[a.start:a.end].lower() == "lingular" and gap.strip() == ","
            one_phrase = bool(_LOBE_GAP.match(gap)) and not _SEPARATOR.search(gap) or lingular_segment
            if same_place and one_phrase:
                lobe = LINGULA if LINGULA in (prev.value, a.value) else a.value
                out[-1] = _Attr("lobe", prev.start, a.end, lobe)
                continue
        out.append(a)
    return out


def _texture_cue(word: str) -> str:
    w = word.lower().replace("-", " ")
    if w.startswith(("part", "semi", "mixed")) or w.startswith("solid ") and w != "solid":
        return "part_solid"
    if w.startswith(("ground", "gg", "non")):
        return "ground_glass"
    if w.startswith("sub"):
        return "subsolid"
    return "solid"


def _texture(cues: list[str]) -> str:
    if "part_solid" in cues:            # a solid component makes a subsolid nodule part-solid
        return "part_solid"
    if "ground_glass" in cues:
        return "ground_glass"
    if "subsolid" in cues:
        return ""
    return "solid" if "solid" in cues else ""


def _separators(text: str, attrs: list[_Attr]) -> list[int]:
    """Positions of separators outside parentheses and outside references and sizes."""
    spans = [a for a in attrs if a.kind in ("ref", "size")]
    depth, opened = 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        opened.append(depth)
    return [m.start() for m in _SEPARATOR.finditer(text)
            if opened[m.start()] == 0 and not _overlaps(m.start(), m.end(), spans)]


# ----------------------------------------------------------------------------------------------
# 3. Groups: the parts -> nodules
# ----------------------------------------------------------------------------------------------

@dataclass
class _Group:
    anchor: Optional[_Attr] = None
    lobe: Optional[_Attr] = None
    size: Optional[_Attr] = None
    ref: Optional[_Attr] = None
    cues: list = field(default_factory=list)      # texture, organ, calcified
    start: int = -1

    def conflicts(self, a: _Attr) -> bool:
        held = getattr(self, a.kind)
        return held is not None and held.value != a.value and not (a.kind == "size" and a.is_mean)

    def take(self, a: _Attr):
        if self.start < 0:
            self.start = a.start
        if a.kind in ("anchor", "lobe", "size", "ref"):
            if getattr(self, a.kind) is None or a.kind == "size" and a.is_mean:
                setattr(self, a.kind, a)
        else:
            self.cues.append(a)


def _groups(text: str, attrs: list[_Attr], seg: _Segment) -> list[_Group]:
    cuts = _separators(text, attrs)
    by_chunk: dict[int, list[_Attr]] = {}
    for a in attrs:
        by_chunk.setdefault(sum(1 for c in cuts if c <= a.start), []).append(a)
    groups: list[_Group] = []
    for chunk in sorted(by_chunk):
        items = by_chunk[chunk]
        if not groups or any(a.kind == "anchor" for a in items) and _starts_new(groups):
            groups.append(_Group())
        for a in items:
            cur = groups[-1]
            if a.kind == "anchor" and cur.anchor is not None or a.kind in ("lobe", "size", "ref") and cur.conflicts(a):
                groups.append(_Group())
            groups[-1].take(a)
    if seg.implicit_anchor and not any(g.anchor for g in groups):
        if not groups and seg.continues:          # "It has resolved."
            groups.append(_Group(start=0))
        if groups:
            groups[0].anchor = _Attr("anchor", 0, 0, "")
    return _share_anchors(groups)


def _starts_new(groups: list[_Group]) -> bool:
    """Whether a chunk with its own "nodule" word starts a new nodule. It does after a nodule
    with its word, and after a lobe given to an earlier plural word ("no nodules in the RUL or
    LLL and the 5 mm lingular nodule"); it does not after context that waits for its word ("In
    the right upper lobe, there is a 6 mm nodule"; "..., and in the LLL, a 4 mm GGO")."""
    if groups[-1].anchor is not None:
        return True
    last_anchor = next((g.anchor for g in reversed(groups) if g.anchor is not None), None)
    return last_anchor is not None and last_anchor.plural


def _share_anchors(groups: list[_Group]) -> list[_Group]:
    """A group without its own "nodule" word takes a plural one next to it ("nodules in the RUL
    and LLL", "RUL and LLL nodules"), with the lobe and texture it names; one with a size or a
    reference stands alone; a lobe alone ("at the junction of the RUL and RML") is dropped."""
    out = []
    for k, g in enumerate(groups):
        if g.anchor is None:
            owner = _plural_owner(groups, k)
            if owner is not None:
                g.anchor, g.lobe = owner.anchor, g.lobe or owner.lobe
                has_texture = any(c.kind == "texture" for c in g.cues)
                g.cues += [c for c in owner.cues if c.kind != "texture" or not has_texture]
            elif g.size is not None or g.ref is not None:
                g.anchor = _Attr("anchor", g.start, g.start, "")
            else:
                continue
        out.append(g)
    return out


def _plural_owner(groups: list[_Group], k: int) -> Optional[_Group]:
    """The group whose plural word group k shares: the nearest one with a word before it, else after it."""
    before = next((h for h in reversed(groups[:k]) if h.anchor is not None), None)
    after = next((h for h in groups[k + 1:] if h.anchor is not None), None)
    for owner in (before, after):
        if owner is not None and owner.anchor.plural:
            return owner
    return None


# ----------------------------------------------------------------------------------------------
# 4. Status: ConText-style triggers around each nodule's word
# ----------------------------------------------------------------------------------------------

_NEGATION_FORWARD = re.compile(r"\b(?:no|without|negative\s+for|free\s+of|absence\s+of|nor|neither)\b", re.I)
_NEGATION_BACKWARD = re.compile(
    r"\b(?:not\s+(?:seen|identified|visuali[sz]ed|present|evident|demonstrated|appreciated|detected|visible|"
    r"apparent)|none|absent|ruled\s+out)\b", re.I)
_PSEUDO_NEGATION = re.compile(  # look like negations, are not: "no change in the RUL nodule"
    r"\b(?:no|without)\s+(?:\w+\s+){0,2}?(?:change|increase|growth|enlargement|progression|calcifications?|"
    r"spiculation|cavitation|suspicious\s+features)\b"
    r"|\bnot\s+(?:previously\s+)?(?:seen|present|visible|identified|evident|visuali[sz]ed|apparent)\s+"
    r"(?:on|in)\s+(?:the\s+)?(?:prior|previous|earlier|comparison|baseline|(?:19|20)\d\d)"
    r"|\bnot\s+(?:seen|present|visible|identified)\s+(?:before|previously)\b|\bnot\s+previously\b"
    r"|\bno\s+longer\b", re.I)
_RESOLUTION = re.compile(
    r"(?<!partially\s)(?<!partly\s)\bresolved\b|(?<!high-)(?<!high\s)\bresolution\b"
    r"|\b(?:no\s+longer|resected|removed|excised|disappeared)\b", re.I)
_HISTORY = re.compile(
    r"\bpreviously\b"
    r"|\b(?:prior|previous|known|old|earlier)\s+(?:[\w-]+\s+){0,3}?(?:nodules?|opacit\w+|GG[ON]s?|mass(?:es)?)\b", re.I)
_HYPOTHETICAL = re.compile(
    r"\bif\b|\bin\s+case\b|\bshould\s+(?:a|any|there)\b|\bfleischner\b|\bguidelines?\b"
    r"|\bnodules?\s*(?:<|>|\u2264|\u2265|less\s+than|greater\s+than|smaller\s+than|larger\s+than)\s*\d"
    r"|\bfor\s+(?:an?\s+|any\s+|all\s+)?(?:\w+[\s-]+){0,2}nodules?\s+(?:<|>|\u2264|\u2265|less|greater|smaller|"
    r"larger|under|over|measuring\s+(?:<|>|less|greater|up))", re.I)
_TERMINATOR = re.compile(
    r";|\bbut\b|\bhowever\b|\balthough\b|\bthough\b|\bwhereas\b|\bwhile\b|\bexcept\b|\bapart\s+from\b|"
    r"\bother\s+than\b|\baside\s+from\b|,\s*and\b|\band\s+(?=(?:the|a|an|this|these|one|two|\d)\b)", re.I)


def _clause(text: str, pos: int) -> tuple[int, int]:
    """The clause around pos: between the terminators before and after it."""
    start, end = 0, len(text)
    for m in _TERMINATOR.finditer(text):
        if m.end() <= pos:
            start = m.end()
        elif m.start() >= pos:
            end = m.start()
            break
    return start, end


def _status(text: str, group: _Group, anchors: list[int], organ_heading: bool, ignored: list[tuple]) -> str:
    """Why the nodule whose word is at group.anchor.start is no label, or "current".
    anchors: positions of all nodule words of the segment; ignored: spans where a trigger word
    is none (pseudo-triggers such as "no change in", words inside a reference "image no. 45")."""
    pos = group.anchor.start
    clause = _clause(text, pos)
    if _resolved(text, pos, anchors, clause):
        return "resolved"
    if _negated(text, pos, anchors, clause, ignored):
        return "resolved" if _HISTORY.search(text[clause[0]:clause[1]]) else "negated"
    if organ_heading or any(c.kind == "organ" for c in group.cues):
        return "non_pulmonary"
    if any(c.kind == "calcified" for c in group.cues) or "granuloma" in group.anchor.value.lower():
        return "calcified"
    if any(m.start() <= pos for m in _HYPOTHETICAL.finditer(text)):
        return "hypothetical"
    return "current"


def _resolved(text: str, pos: int, anchors: list[int], clause: tuple) -> bool:
    """A resolution word of the clause whose nearest nodule word (before or after) is this one:
    "previously seen RUL nodule has resolved", "resolution of the RUL nodule"."""
    start, end = clause
    inside = [a for a in anchors if start <= a < end]
    return any(start <= m.start() < end and min(inside, key=lambda a: abs(a - m.start())) == pos
               for m in _RESOLUTION.finditer(text))


def _negated(text: str, pos: int, anchors: list[int], clause: tuple, ignored: list[tuple]) -> bool:
    """A forward negation before the word whose clause reaches it ("no new nodules"), or a
    backward one in its clause with this word the last before it ("nodule is not seen")."""
    real = [m for m in _NEGATION_FORWARD.finditer(text) if not any(s <= m.start() < e for s, e in ignored)]
    if any(m.end() <= pos < _clause(text, m.start())[1] for m in real):
        return True
    start, end = clause
    for m in _NEGATION_BACKWARD.finditer(text):
        if start <= m.start() < end and not any(s <= m.start() < e for s, e in ignored):
            if max((a for a in anchors if a <= m.start()), default=None) == pos:
                return True
    return False


def _mentions_of(seg: _Segment) -> list[Finding]:
    attrs = _attributes(seg.text)
    if not seg.implicit_anchor and not any(a.kind == "anchor" for a in attrs):
        return []
    groups = _groups(seg.text, attrs, seg)
    anchors = sorted({g.anchor.start for g in groups})
    ignored = [m.span() for m in _PSEUDO_NEGATION.finditer(seg.text)]
    ignored += [(a.start, a.end) for a in attrs if a.kind in ("ref", "size")]
    out = []
    for g in groups:
        series, image = g.ref.value if g.ref else (None, None)
        out.append(Finding(
            lobe=g.lobe.value if g.lobe else -1, series=series, image=image,
            diameter_mm=g.size.value if g.size else None,
            texture=_texture([c.value for c in g.cues if c.kind == "texture"]),
            status=_status(seg.text, g, anchors, seg.organ_heading, ignored), text=seg.text))
    return out


# ----------------------------------------------------------------------------------------------
# Repeats: the impression names the nodules of the findings again
# ----------------------------------------------------------------------------------------------

def _agree(a, b) -> bool:
    return a is None or b is None or a == b


def _same_nodule(f: Finding, g: Finding) -> bool:
    return ((f.lobe == g.lobe or -1 in (f.lobe, g.lobe)) and _agree(f.series, g.series) and _agree(f.image, g.image)
            and (f.diameter_mm is None or g.diameter_mm is None or abs(f.diameter_mm - g.diameter_mm) <= 0.6)
            and (f.texture == g.texture or "" in (f.texture, g.texture)))


def _fill_from(f: Finding, g: Finding, take_status: bool = False) -> Finding:
    """f with what it lacks taken from g (and g's status if asked and g is not current)."""
    return replace(
        f, lobe=f.lobe if f.lobe >= 0 else g.lobe,
        series=f.series if f.series is not None else g.series, image=f.image if f.image is not None else g.image,
        diameter_mm=f.diameter_mm if f.diameter_mm is not None else g.diameter_mm, texture=f.texture or g.texture,
        status=g.status if take_status and g.status != "current" else f.status)


def _information(f: Finding) -> int:
    known = (f.lobe >= 0, f.series is not None, f.image is not None, f.diameter_mm is not None, bool(f.texture))
    return sum(known)


def _merge_repeats(findings: list[Finding]) -> list[Finding]:
    out: list[Finding] = []
    for f in findings:
        k = next((k for k in range(len(out) - 1, -1, -1) if _same_nodule(out[k], f)), None)
        if k is None:
            out.append(f)
            continue
        merged = _fill_from(out[k], f)
        text = out[k].text if _information(out[k]) >= _information(f) else f.text
        out[k] = replace(merged, text=text)
    return out
