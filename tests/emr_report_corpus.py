"""Chest CT report passages with the current pulmonary nodules a reader should take from them.

Written for these tests in the styles of public reporting templates and of real dictation:
RSNA RadReport chest CT findings paragraphs, ACR Lung-RADS screening reports with a nodule
list, structured Location/Size/Series-Image templates (block and one-line), numbered impression
lists, terse dictation with abbreviations, UK style "(image 45, series 3)" with a conclusion,
follow-up comparisons with prior sizes, several nodules in one sentence, segment-level
locations, Fleischner-style incidental findings with their recommendation text, and passages
that mix current nodules with ones that are not. The negative passages (negations, resolved
priors, nodules of other organs, calcified granulomas, guideline text) must give no finding.

Each expected nodule is (lobe, series, image, diameter_mm, texture); lobe 0..5 = RUL, RML, RLL,
LUL, lingula, LLL; series None where the passage gives only an image number; two axes give
their mean (Lung-RADS).

`score(extract)` matches an extractor's findings with the expectations; `score_table()` gives
the per-style table as markdown (for docs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

RUL, RML, RLL, LUL, LING, LLL = range(6)
SOLID, PART, GGO = "solid", "part_solid", "ground_glass"
NEGATIVE_STYLES = ("negation", "resolved", "other_organ", "calcified", "guideline")


@dataclass(frozen=True)
class Nodule:
    lobe: int
    series: Optional[int]
    image: Optional[int]
    diameter_mm: Optional[float]
    texture: str = ""


@dataclass(frozen=True)
class Passage:
    style: str
    text: str
    expected: tuple = ()


def N(lobe, series, image, size, texture=""):
    return Nodule(lobe, series, image, size, texture)


def P(style, text, *expected):
    return Passage(style, text.strip("\n"), tuple(expected))


PASSAGES = [
    # ---- RSNA RadReport-style findings paragraphs ---------------------------------------------
    P("narrative", """
FINDINGS:
Lungs and airways: There is a 6 mm solid nodule in the right upper lobe (series 3, image 45). No other
pulmonary nodules. The central airways are patent.
Pleura: No effusion.""", N(RUL, 3, 45, 6.0, SOLID)),
    P("narrative", "LUNGS: A 4 x 3 mm solid nodule is present in the lateral segment of the right middle lobe "
                   "(series 2, image 112). Mild centrilobular emphysema. No consolidation.",
      N(RML, 2, 112, 3.5, SOLID)),
    P("narrative", "Lungs: There is an 8 mm part-solid nodule in the left upper lobe (series 4, image 67) with a "
                   "3 mm solid component. Scattered atelectasis at the bases.", N(LUL, 4, 67, 8.0, PART)),
    P("narrative", """
FINDINGS:
Lungs: Ground-glass nodule in the right lower lobe measuring 1.2 x 1.0 cm (series 5, image 150).
Additional 5 mm solid nodule in the left lower lobe (series 5, image 188). Heart size normal.""",
      N(RLL, 5, 150, 11.0, GGO), N(LLL, 5, 188, 5.0, SOLID)),
    P("narrative", "The lungs demonstrate a 7 mm noncalcified solid nodule in the lingula (series 3, image 140). "
                   "There is no pleural effusion or pneumothorax.", N(LING, 3, 140, 7.0, SOLID)),
    P("narrative", "Lungs and pleura: A 5 mm nodule along the minor fissure in the right middle lobe is likely a "
                   "perifissural lymph node (series 2, image 98). Lungs otherwise clear.", N(RML, 2, 98, 5.0)),
    P("narrative", "There is a spiculated 1.8 cm mass in the left upper lobe (series 2, image 55), suspicious for "
                   "primary lung malignancy.", N(LUL, 2, 55, 18.0)),
    P("narrative", "LUNGS: Multiple bilateral pulmonary nodules, the largest measuring 9 mm in the right lower "
                   "lobe (series 4, image 201).", N(RLL, 4, 201, 9.0)),

    # ---- ACR Lung-RADS screening reports -----------------------------------------------------
    P("lung_rads", """
LOW-DOSE CT LUNG CANCER SCREENING
Comparison: 03/12/2023.
Nodules:
1. RUL, 6.5 mm, solid, series 3 image 62, new.
2. LLL, 4.0 mm, ground glass, series 3 image 190, stable.
Lung-RADS category: 3""", N(RUL, 3, 62, 6.5, SOLID), N(LLL, 3, 190, 4.0, GGO)),
    P("lung_rads", """
Lung nodules:
1. Right upper lobe solid nodule, 5.2 mm mean diameter (series 2, image 44). Lung-RADS 2.
2. Left lower lobe part-solid nodule, 9 mm total with 4 mm solid component (series 2, image 151). Lung-RADS 3.
Lung-RADS category: 3 (probably benign).""", N(RUL, 2, 44, 5.2, SOLID), N(LLL, 2, 151, 9.0, PART)),
    P("lung_rads", "Findings: Lung nodules: Solid nodule in the superior segment of the right lower lobe, mean "
                   "diameter 7.5 mm (series 3, image 110), Lung-RADS 3.\nImpression: Lung-RADS 3. Recommend "
                   "6-month LDCT.", N(RLL, 3, 110, 7.5, SOLID)),
    P("lung_rads", """
Nodule(s):
- LUL, 1.1 x 0.9 cm, solid, image 88 of series 2, Lung-RADS 4A.
- RML, 3.8 mm, solid, image 120 of series 2, Lung-RADS 2.""", N(LUL, 2, 88, 10.0, SOLID), N(RML, 2, 120, 3.8, SOLID)),
    P("lung_rads", """
LUNG-RADS ASSESSMENT: 4B
DOMINANT NODULE: 16 mm solid nodule in the left lower lobe, series 4 image 233, increased from 11 mm.""",
      N(LLL, 4, 233, 16.0, SOLID)),
    P("lung_rads", """
Nodules:
1. RLL (5/131): 4.5 mm, solid, unchanged since baseline.
2. RUL (5/40): 3.5 mm, solid, unchanged.""", N(RLL, 5, 131, 4.5, SOLID), N(RUL, 5, 40, 3.5, SOLID)),
    P("lung_rads", """
Lungs:
Nodules: 2
  a) 7 mm solid nodule, left upper lobe (se 3, im 77), new, Lung-RADS 4A.
  b) 3 mm solid nodule, right lower lobe (se 3, im 190), Lung-RADS 2.""",
      N(LUL, 3, 77, 7.0, SOLID), N(RLL, 3, 190, 3.0, SOLID)),

    # ---- structured templates, one field a line ------------------------------------------------
    P("structured", """
Nodule 1
Location: RUL
Size: 6 mm
Series/Image: 3/45
Type: Solid

Nodule 2
Location: LLL
Size: 4 x 3 mm
Series/Image: 3/101
Type: Ground glass""", N(RUL, 3, 45, 6.0, SOLID), N(LLL, 3, 101, 3.5, GGO)),
    P("structured", """
Location: left upper lobe, lingular segment
Size: 0.7 x 0.5 cm
Series/Image: 4/87
Composition: part-solid""", N(LING, 4, 87, 6.0, PART)),
    P("structured", """
Nodule #1:
  Lobe: right middle lobe
  Diameter: 5 mm
  Image: 77 (series 2)
  Attenuation: solid
Nodule #2:
  Lobe: lingula
  Diameter: 4 mm
  Image: 131 (series 2)
  Attenuation: nonsolid""", N(RML, 2, 77, 5.0, SOLID), N(LING, 2, 131, 4.0, GGO)),
    P("structured", """
PULMONARY NODULE
Site: RUL, posterior segment
Measurements: 9 x 7 mm
Se/Im: 6/58
Character: subsolid with solid component""", N(RUL, 6, 58, 8.0, PART)),
    P("structured", """
Location: RLL
Size: 12 mm
Series/Image: 5/140
Type: solid
Location: RML
Size: 5 mm
Series/Image: 5/96
Type: solid""", N(RLL, 5, 140, 12.0, SOLID), N(RML, 5, 96, 5.0, SOLID)),

    # ---- structured templates on one line --------------------------------------------------------
    P("template_inline", "Location: RUL  Size: 6 mm  Series/Image: 3/45  Type: solid", N(RUL, 3, 45, 6.0, SOLID)),
    P("template_inline", "Location: RLL | Size: 8.2 mm | Series/Image: 5/140 | Type: solid | Status: new",
      N(RLL, 5, 140, 8.2, SOLID)),
    P("template_inline", """
Nodule 1: Location: LLL; Size: 11 mm; Series/Image: 3/201; Type: solid.
Nodule 2: Location: RML; Size: 4 mm; Series/Image: 3/150; Type: ground glass.""",
      N(LLL, 3, 201, 11.0, SOLID), N(RML, 3, 150, 4.0, GGO)),
    P("template_inline", "Lobe: LUL   Mean diameter: 7.5 mm   Image: 64   Texture: part-solid",
      N(LUL, None, 64, 7.5, PART)),
    P("template_inline", "Location: lingula | Size: 5 x 4 mm | Series: 2 Image: 118 | Type: GGN",
      N(LING, 2, 118, 4.5, GGO)),

    # ---- numbered impression lists ---------------------------------------------------------------
    P("impression", """
IMPRESSION:
1. 6 mm solid nodule in the right upper lobe (3:45). Lung-RADS 3; 6-month follow-up LDCT recommended.
2. Mild emphysema.""", N(RUL, 3, 45, 6.0, SOLID)),
    P("impression", """
IMPRESSION:
1. New 9 mm part-solid nodule in the left lower lobe (4:188), Lung-RADS 4A.
2. Stable 4 mm right middle lobe nodule (4:120).
3. No suspicious adenopathy.""", N(LLL, 4, 188, 9.0, PART), N(RML, 4, 120, 4.0)),
    P("impression", "Impression: 1. Right upper lobe 1.4 cm spiculated nodule (series 2 image 33), suspicious for "
                    "malignancy. 2. Additional 3 mm left upper lobe nodule (series 2 image 71), likely benign.",
      N(RUL, 2, 33, 14.0), N(LUL, 2, 71, 3.0)),
    P("impression", """
IMPRESSION:
- Ground-glass opacity in the RUL measuring 8 mm (5; 87), likely inflammatory; follow-up recommended.
- 2 mm RLL micronodule (5; 140).""", N(RUL, 5, 87, 8.0, GGO), N(RLL, 5, 140, 2.0)),
    P("impression", """
IMPRESSION:
1. Interval growth of the left upper lobe nodule, now 11 mm (previously 8 mm) on series 3, image 77. Lung-RADS 4B.
2. Otherwise stable examination.""", N(LUL, 3, 77, 11.0)),
    P("impression", """
IMPRESSION:
1. Two new solid nodules: RLL 6 mm (4:150) and LUL 5 mm (4:61). Lung-RADS 3.
2. Previously seen right middle lobe nodule has resolved.""", N(RLL, 4, 150, 6.0, SOLID), N(LUL, 4, 61, 5.0, SOLID)),

    # ---- terse dictation, abbreviations ------------------------------------------------------------
    P("dictation", "RUL 6mm solid nod se 3 im 45. LLL 4mm GGO se 3 im 88. No other nods.",
      N(RUL, 3, 45, 6.0, SOLID), N(LLL, 3, 88, 4.0, GGO)),
    P("dictation", "CT chest w/o. Lungs: RML 5 mm nodule 4/120, stable. Lingula 3 mm nodule 4/140, stable. "
                   "No new nodules. Mild emphysema.", N(RML, 4, 120, 5.0), N(LING, 4, 140, 3.0)),
    P("dictation", "Lungs: 8 mm ggo RUL (se4 im201), 5mm solid LLL (se4 im260).",
      N(RUL, 4, 201, 8.0, GGO), N(LLL, 4, 260, 5.0, SOLID)),
    P("dictation", "Sm 4 mm RLL nod (2/98) unchgd. Tiny LUL nod 2/45 unchgd.",
      N(RLL, 2, 98, 4.0), N(LUL, 2, 45, None)),
    P("dictation", "RUL apical seg 7x5mm part-solid nodule S3 I22; LLL sup seg 4mm solid nodule S3 I150.",
      N(RUL, 3, 22, 6.0, PART), N(LLL, 3, 150, 4.0, SOLID)),
    P("dictation", "Lungs: 0.6 cm solid RLL nodule, image 210 series 5; new.", N(RLL, 5, 210, 6.0, SOLID)),
    P("dictation", "rt upper lobe nodule 5 mm im 33 se 2, lt lower lobe nodule 7 mm im 140 se 2.",
      N(RUL, 2, 33, 5.0), N(LLL, 2, 140, 7.0)),

    # ---- UK style: (image N, series S), conclusion -------------------------------------------------
    P("uk", """
There is a 6 mm solid nodule in the right upper lobe (image 45, series 3). No other pulmonary nodules are seen.
Conclusion: Solitary 6 mm right upper lobe nodule. Follow-up CT at 12 months as per BTS guidelines.""",
      N(RUL, 3, 45, 6.0, SOLID)),
    P("uk", "Findings: A 9 mm part solid nodule in the left lower lobe (image 201, series 4) has a 3 mm solid "
            "component. A 4 mm solid nodule is seen in the lingula (image 150, series 4).",
      N(LLL, 4, 201, 9.0, PART), N(LING, 4, 150, 4.0, SOLID)),
    P("uk", "Report: Small 3 mm nodule right middle lobe (image 98, series 3) - no follow-up required per BTS "
            "guidance. Lungs otherwise clear.", N(RML, 3, 98, 3.0)),
    P("uk", "Comparison is made with the CT of 12/2022. The 7 mm ground glass nodule in the right lower lobe "
            "(image 180, series 5) is unchanged.", N(RLL, 5, 180, 7.0, GGO)),
    P("uk", "There are two nodules in the left upper lobe, measuring 5 mm (image 60, series 3) and 4 mm "
            "(image 72, series 3).", N(LUL, 3, 60, 5.0), N(LUL, 3, 72, 4.0)),

    # ---- follow-up comparisons with prior sizes ------------------------------------------------------
    P("comparison", "The right lower lobe nodule now measures 0.7 cm, previously 0.5 cm (series 3, image 78).",
      N(RLL, 3, 78, 7.0)),
    P("comparison", "The left upper lobe nodule measures 8 mm (previously 6 mm) on series 4, image 102, compatible "
                    "with interval growth.", N(LUL, 4, 102, 8.0)),
    P("comparison", "Solid nodule in the right middle lobe has increased from 4 to 6 mm (series 2, image 130).",
      N(RML, 2, 130, 6.0, SOLID)),
    P("comparison", "Part-solid nodule in the right upper lobe increased from 1.0 cm to 1.3 cm (3/52); its solid "
                    "component increased from 2 to 5 mm.", N(RUL, 3, 52, 13.0, PART)),
    P("comparison", "Compared to 01/05/2023, the 5 mm solid nodule in the LLL (series 3, image 170) is stable. The "
                    "RUL ground-glass nodule has grown to 9 mm (series 3, image 48), previously 6 mm.",
      N(LLL, 3, 170, 5.0, SOLID), N(RUL, 3, 48, 9.0, GGO)),
    P("comparison", "Stable 4 mm solid nodule in the lingula (image 140), unchanged since 2021. No new nodules.",
      N(LING, None, 140, 4.0, SOLID)),
    P("comparison", "Decreased size of the left lower lobe ground-glass nodule, now 5 mm from 8 mm (4:210).",
      N(LLL, 4, 210, 5.0, GGO)),
    P("comparison", "A 7 mm RLL nodule (5; 87), previously 5 mm, and a 6 mm RUL nodule (5; 33), 4 mm on the "
                    "prior study.", N(RLL, 5, 87, 7.0), N(RUL, 5, 33, 6.0)),

    # ---- several nodules in one sentence --------------------------------------------------------------
    P("multi", "There is a 6 mm solid nodule in the right upper lobe (series 3, image 45) and a 4 mm ground-glass "
               "nodule in the left lower lobe (series 3, image 88).",
      N(RUL, 3, 45, 6.0, SOLID), N(LLL, 3, 88, 4.0, GGO)),
    P("multi", "Solid nodules in the RUL (3:45, 6 mm) and LLL (3:88, 4 mm).",
      N(RUL, 3, 45, 6.0, SOLID), N(LLL, 3, 88, 4.0, SOLID)),
    P("multi", "Two right upper lobe nodules measuring 6 mm (3:45) and 4 mm (3:50).",
      N(RUL, 3, 45, 6.0), N(RUL, 3, 50, 4.0)),
    P("multi", "Nodules: RUL 6 mm (3/45); LLL 4 mm (3/88); lingula 5 mm (3/120).",
      N(RUL, 3, 45, 6.0), N(LLL, 3, 88, 4.0), N(LING, 3, 120, 5.0)),
    P("multi", "Small nodules are present in the right middle lobe (5 mm, image 102) and left lower lobe "
               "(3 mm, image 160).", N(RML, None, 102, 5.0), N(LLL, None, 160, 3.0)),
    P("multi", "In the right upper lobe, there is a 6 mm nodule (3:45), and in the left lower lobe, a 4 mm ground "
               "glass opacity (3:88).", N(RUL, 3, 45, 6.0), N(LLL, 3, 88, 4.0, GGO)),
    P("multi", "Three solid nodules: RUL 5 mm (2/40), RML 4 mm (2/90), and LLL 7 mm (2/150).",
      N(RUL, 2, 40, 5.0, SOLID), N(RML, 2, 90, 4.0, SOLID), N(LLL, 2, 150, 7.0, SOLID)),

    # ---- segment-level locations ------------------------------------------------------------------------
    P("segmental", "There is a 5 mm nodule in the posterior segment of the right upper lobe (series 3, image 50).",
      N(RUL, 3, 50, 5.0)),
    P("segmental", "A 7 mm solid nodule is seen in the superior segment RLL (se 4 im 150).",
      N(RLL, 4, 150, 7.0, SOLID)),
    P("segmental", "A 6 x 5 mm ground-glass nodule in the lateral basal segment of the left lower lobe, axial "
                   "image 201.", N(LLL, None, 201, 5.5, GGO)),
    P("segmental", "Nodule in the left upper lobe lingular segment measuring 4 mm (3/130).", N(LING, 3, 130, 4.0)),
    P("segmental", "Apicoposterior segment LUL nodule, 8 mm, part solid (image 51 of series 2).",
      N(LUL, 2, 51, 8.0, PART)),
    P("segmental", "A 5 mm solid nodule in the inferior lingular segment (on image 90).",
      N(LING, None, 90, 5.0, SOLID)),
    P("segmental", "Medial segment of the right middle lobe: 4 mm nodule (img 45).", N(RML, None, 45, 4.0)),
    P("segmental", "Right lower lobe posterior basal segment: 1.1 x 0.8 cm solid nodule (series 2 image 47).",
      N(RLL, 2, 47, 9.5, SOLID)),

    # ---- Fleischner-style incidental nodules with recommendation text -------------------------------------
    P("fleischner", "Incidental 5 mm solid nodule in the right lower lobe (series 4, image 180). Per Fleischner "
                    "Society guidelines, no routine follow-up is recommended for a solitary solid nodule < 6 mm in "
                    "a low-risk patient.", N(RLL, 4, 180, 5.0, SOLID)),
    P("fleischner", "A 7 mm subsolid nodule with a 3 mm solid component is present in the left upper lobe (series 3, "
                    "image 66). Recommend CT at 3-6 months per Fleischner guidelines; if unchanged and the solid "
                    "component remains < 6 mm, annual CT for 5 years.", N(LUL, 3, 66, 7.0, PART)),
    P("fleischner", "Incidentally noted 8 mm ground-glass nodule in the right upper lobe (image 77, series 6). For a "
                    "solitary ground-glass nodule of this size, follow-up CT at 6-12 months is suggested.",
      N(RUL, 6, 77, 8.0, GGO)),
    P("fleischner", "A 4 mm solid nodule in the lingula (series 2, image 139). No follow-up needed if low risk; "
                    "optional CT at 12 months if high risk (Fleischner 2017).", N(LING, 2, 139, 4.0, SOLID)),
    P("fleischner", "Incidental 9 x 7 mm semisolid nodule in the right lower lobe on image 88 of series 3. If "
                    "multiple subsolid nodules are present, follow-up per Fleischner guidelines.",
      N(RLL, 3, 88, 8.0, PART)),

    # ---- current nodules mixed with sentences that are not ------------------------------------------------
    P("mixed", "No new nodules; stable 5 mm LLL nodule (img 80). Previously seen RUL nodule has resolved. 1.2 cm "
               "nodule in the right lobe of the thyroid.", N(LLL, None, 80, 5.0)),
    P("mixed", "The 5 mm nodule in the RML (2:47) is unchanged and the 4 mm LLL nodule has resolved. There is no "
               "change in the 6 mm RUL nodule (series 2 image 30).", N(RML, 2, 47, 5.0), N(RUL, 2, 30, 6.0)),
    P("mixed", "New 6 mm RUL nodule (3:45), not present on prior. Calcified granuloma in the RLL. No other nodules.",
      N(RUL, 3, 45, 6.0)),
    P("mixed", "High-resolution images show a 5 mm RLL nodule (4:150) without calcification.", N(RLL, 4, 150, 5.0)),
    P("mixed", "A 6 mm solid nodule in the right upper lobe (series 3, image 45). It is unchanged since 2020. "
               "The nodule abuts the minor fissure. Incidental 1.1 cm left adrenal nodule.",
      N(RUL, 3, 45, 6.0, SOLID)),
    P("mixed", "There is a solid nodule in the superior segment RLL. It measures 8 mm (previously 6 mm) on axial "
               "image 63. No nodules in the RUL or LLL.", N(RLL, None, 63, 8.0, SOLID)),
    P("mixed", "No nodules in the RUL or LLL and the 5 mm lingular nodule is stable (3:99).", N(LING, 3, 99, 5.0)),

    # ---- negative passages: no current pulmonary nodule -------------------------------------------------------
    P("negation", "LUNGS: No suspicious pulmonary nodules. No consolidation or effusion."),
    P("negation", "No new or enlarging nodules. Stable mild emphysema."),
    P("negation", "No pulmonary nodule is seen."),
    P("negation", "The lungs are clear without nodules, masses or consolidation."),
    P("negation", "Nodules:\n1. None.\nLung-RADS category: 1 (negative)."),
    P("negation", "There is no evidence of a pulmonary nodule in the right upper lobe to correspond with the "
                  "radiographic finding."),
    P("negation", "Negative for pulmonary nodules. No nodules in the RUL or LLL."),
    P("resolved", "Previously seen RUL nodule has resolved."),
    P("resolved", "The 5 mm left lower lobe nodule seen on the prior study (series 3, image 140) is no longer "
                  "visualized."),
    P("resolved", "Interval resolution of the previously noted ground-glass opacity in the right middle lobe."),
    P("resolved", "The previously described lingular nodule is not seen on today's examination, compatible with "
                  "resolution."),
    P("resolved", "Status post right upper lobe wedge resection; the previously biopsied RUL nodule has been "
                  "resected."),
    P("other_organ", "THYROID: 1.2 cm nodule in the right lobe of the thyroid; recommend ultrasound."),
    P("other_organ", "A right lobe thyroid nodule measuring 1.5 cm is noted."),
    P("other_organ", "Upper abdomen: 1.8 cm left adrenal nodule, likely adenoma. Hypodense 6 mm lesion in the liver, "
                     "too small to characterize."),
    P("other_organ", "Incidental 1 cm nodule in the left breast (series 2, image 60); correlate with mammography."),
    P("other_organ", "Kidneys: 8 mm exophytic nodule from the upper pole of the left kidney."),
    P("other_organ", "Thyroid:\n- 9 mm hypodense nodule in the left lobe.\n- 6 mm nodule in the isthmus."),
    P("calcified", "Stable calcified granuloma in the right middle lobe."),
    P("calcified", "A densely calcified 4 mm nodule in the left lower lobe (series 3, image 150) is benign, "
                   "consistent with a granuloma."),
    P("guideline", "Per Fleischner guidelines, no follow-up is needed for solid nodules smaller than 6 mm in "
                   "low-risk patients."),
    P("guideline", "Lung-RADS 2: benign appearance; nodules < 6 mm at baseline. Continue annual screening."),
    P("guideline", "If a new nodule develops, consider short-interval follow-up."),

    # ---- second batch: written after the extractor and scored before any change to it (18 of
    # ---- 23 nodules right, no finding on the negatives, 5 extra findings from 3 passages) --------
    P("narrative", "Lungs: Mild paraseptal emphysema. A 5 mm pleural-based solid nodule is noted in the right lower "
                   "lobe, series 4 image 211. A second 3 mm nodule is seen in the left upper lobe, series 4 image 98.",
      N(RLL, 4, 211, 5.0, SOLID), N(LUL, 4, 98, 3.0)),
    P("narrative", "There is a 1.3 x 1.1 cm lobulated soft tissue nodule in the anterior segment of the left upper "
                   "lobe (series 3, image 72), new since the prior exam.", N(LUL, 3, 72, 12.0, SOLID)),
    P("narrative", "A cluster of ground-glass nodules is present in the right upper lobe, the largest measuring 7 mm "
                   "(series 5, image 60).", N(RUL, 5, 60, 7.0, GGO)),
    P("lung_rads", """
NODULES:
1. Location: RML. Size: 4.6 mm. Attenuation: solid. Image: 3/133.
2. Location: LUL. Size: 6.1 mm. Attenuation: part solid. Image: 3/54.
LUNG-RADS: 3""", N(RML, 3, 133, 4.6, SOLID), N(LUL, 3, 54, 6.1, PART)),
    P("lung_rads", "Most suspicious nodule: left lower lobe, 11.5 mm, solid (series 201, image 187).\nLung-RADS: 4A.",
      N(LLL, 201, 187, 11.5, SOLID)),
    P("impression", """
IMPRESSION:
1. 1.6 cm spiculated right upper lobe mass (series 3, image 40), highly suspicious for malignancy. Lung-RADS 4X.
2. No thoracic lymphadenopathy.""", N(RUL, 3, 40, 16.0)),
    P("impression", "IMPRESSION: Stable 5 mm left lower lobe nodule (image 150), no further follow-up required. No new "
                    "pulmonary nodules.", N(LLL, None, 150, 5.0)),
    P("dictation", "LUNGS: 4mm RUL nod (3/48) & 3mm LLL nod (3/160), both stable x 2 yrs.",
      N(RUL, 3, 48, 4.0), N(LLL, 3, 160, 3.0)),
    P("dictation", "sub-cm ggn RLL 8mm im 120 se 5 - stable", N(RLL, 5, 120, 8.0, GGO)),
    P("uk", "There is a 7mm solid nodule within the right upper lobe (image 52, series 4), not present on the "
            "previous study of 2021. Conclusion: new 7mm right upper lobe nodule, CT follow-up in 3 months.",
      N(RUL, 4, 52, 7.0, SOLID)),
    P("uk", "Small nodule in the lingula (image 88 series 3) measuring 4mm, unchanged.", N(LING, 3, 88, 4.0)),
    P("comparison", "The dominant left upper lobe nodule has enlarged, measuring 1.4 cm compared to 1.1 cm previously "
                    "(series 2, image 64).", N(LUL, 2, 64, 14.0)),
    P("comparison", "Right middle lobe part-solid nodule: total size 12 mm (prior 10 mm), solid component 6 mm (prior "
                    "3 mm); series 3, image 118.", N(RML, 3, 118, 12.0, PART)),
    P("multi", "Bilateral lower lobe nodules: right 5 mm (4:190), left 6 mm (4:202).",
      N(RLL, 4, 190, 5.0), N(LLL, 4, 202, 6.0)),
    P("multi", "Ground-glass nodules in the right upper lobe (6 mm, series 2 image 40) and left upper lobe (5 mm, "
               "series 2 image 44).", N(RUL, 2, 40, 6.0, GGO), N(LUL, 2, 44, 5.0, GGO)),
    P("segmental", "A 6 mm nodule in the anterior basal segment of the right lower lobe (image 190 of series 4).",
      N(RLL, 4, 190, 6.0)),
    P("structured", "Nodule A\nLobe: RLL\nSize (mm): 7 x 6\nImage #: 174\nType: solid", N(RLL, None, 174, 6.5, SOLID)),
    P("fleischner", "There is a 6 mm solid nodule in the right middle lobe (series 3, image 120). Fleischner "
                    "recommendations for a single solid nodule 6-8 mm in a high-risk patient: CT at 6-12 months, then "
                    "consider CT at 18-24 months.", N(RML, 3, 120, 6.0, SOLID)),
    P("negation", "Lungs: Clear. No focal consolidation. No suspicious nodules or masses. Airways patent."),
    P("resolved", "The small ground-glass nodule in the left upper lobe previously described has resolved."),
    P("other_organ", "Limited evaluation of the upper abdomen demonstrates a 2.1 cm right adrenal nodule."),
    P("calcified", "Several calcified granulomas in the right upper lobe and left lower lobe, unchanged."),
]


# ---- scoring ------------------------------------------------------------------------------------

def _right(f, n: Nodule) -> bool:
    """Lobe, image (and series where given) and size right."""
    size_right = (n.diameter_mm is None and f.diameter_mm is None) or (
        n.diameter_mm is not None and f.diameter_mm is not None and abs(f.diameter_mm - n.diameter_mm) <= 0.1)
    return (f.lobe == n.lobe and f.image == n.image and (n.series is None or f.series == n.series) and size_right)


def score_passage(extract, passage: Passage) -> dict:
    """Found right, texture right among them, and findings that match no expected nodule."""
    findings = list(extract(passage.text))
    right = texture = 0
    for n in passage.expected:
        k = next((k for k, f in enumerate(findings) if _right(f, n)), None)
        if k is not None:
            right += 1
            texture += findings[k].texture == n.texture
            findings.pop(k)
    return dict(nodules=len(passage.expected), right=right, texture=texture, extra=len(findings))


def score(extract=None) -> dict:
    """Per style: passages, nodules, found right, texture right, extra findings."""
    if extract is None:
        from deepem.emr.reports import extract_findings as extract
    table: dict = {}
    for p in PASSAGES:
        row = table.setdefault(p.style, dict(passages=0, nodules=0, right=0, texture=0, extra=0))
        row["passages"] += 1
        for key, value in score_passage(extract, p).items():
            row[key] += value
    return table


def score_table(extract=None) -> str:
    """The per-style table as markdown, with a total row."""
    table = score(extract)
    keys = ("passages", "nodules", "right", "texture", "extra")
    total = {key: sum(row[key] for row in table.values()) for key in keys}
    lines = ["| style | passages | nodules | found right | texture right | extra findings |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for style, row in list(table.items()) + [("**all**", total)]:
        lines.append(f"| {style} | {row['passages']} | {row['nodules']} | {row['right']} | {row['texture']} | "
                     f"{row['extra']} |")
    share = total["right"] / max(total["nodules"], 1)
    negatives = sum(row["passages"] for style, row in table.items() if style in NEGATIVE_STYLES)
    lines += ["", f"Found right (lobe, image and series where given, size within 0.1 mm): {total['right']} of "
                  f"{total['nodules']} ({share:.1%}); negative passages: {negatives}."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(score_table())
