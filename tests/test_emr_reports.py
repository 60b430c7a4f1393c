"""deepem.emr.reports: nodules from free-text chest CT reports, and the phantom's report writer.

(a) hard cases one by one, with their expected values written out; (b) the corpus of
emr_report_corpus.py: at least 90% of expected nodules found right, nothing on any negative
passage; (c) phantom reports read back: exactly the planted nodules.
"""
import subprocess
import sys

import numpy as np
import pytest

import emr_report_corpus as corpus
from deepem.data.phantom.reports import STYLES, write_report, written_diameter_mm
from deepem.emr.reports import Finding, extract_findings, extract_mentions

RUL, RML, RLL, LUL, LING, LLL = range(6)


def found(text):
    """(lobe, series, image, diameter_mm, texture) of each current finding."""
    return [(f.lobe, f.series, f.image, f.diameter_mm, f.texture) for f in extract_findings(text)]


def statuses(text):
    return [m.status for m in extract_mentions(text)]


# ---- (a) hard cases ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("A 6 mm nodule in the right upper lobe.", RUL),
    ("A 6 mm nodule in the RML.", RML),
    ("Nodule in the superior segment RLL measuring 6 mm.", RLL),
    ("A 6 mm nodule in the lateral basal segment of the left lower lobe.", LLL),
    ("A 6 mm nodule in the apicoposterior segment of the left upper lobe.", LUL),
    ("A 6 mm lingular nodule.", LING),
    ("A 6 mm nodule in the left upper lobe lingular segment.", LING),
    ("A 6 mm nodule in the inferior lingular segment of the left upper lobe.", LING),
    ("6 mm nodule, left upper lobe, lingular segment.", LING),
    ("A 6 mm nodule in the middle lobe.", RML),
    ("rt lower lobe nodule 6 mm.", RLL),
    ("A 6 mm nodule in the right lung.", -1),
])
def test_lobes(text, expected):
    assert [f.lobe for f in extract_findings(text)] == [expected]


@pytest.mark.parametrize("text, series, image", [
    ("6 mm RUL nodule, series 3, image 45.", 3, 45),
    ("6 mm RUL nodule (3:45).", 3, 45),
    ("6 mm RUL nodule (5; 87).", 5, 87),
    ("6 mm RUL nodule se 4 im 201.", 4, 201),
    ("6 mm RUL nodule 3/78.", 3, 78),
    ("6 mm RUL nodule on axial image 63.", None, 63),
    ("6 mm RUL nodule on image 51 of series 2.", 2, 51),
    ("6 mm RUL nodule on image 90.", None, 90),
    ("6 mm RUL nodule (series 2 image 47).", 2, 47),
    ("6 mm RUL nodule (img 45).", None, 45),
    ("6 mm RUL nodule (image 45, series 3).", 3, 45),
    ("6 mm RUL nodule S3 I22.", 3, 22),
    ("6 mm RUL nodule, series 3, images 44-48.", 3, 46),
])
def test_image_references(text, series, image):
    (f,) = extract_findings(text)
    assert (f.series, f.image) == (series, image)


@pytest.mark.parametrize("text, size", [
    ("A 6 x 4 mm RUL nodule.", 5.0),
    ("A 0.7 x 0.5 cm RUL nodule.", 6.0),
    ("A 6 mm RUL nodule.", 6.0),
    ("A 6-mm RUL nodule.", 6.0),
    ("RUL nodule 1.2 cm.", 12.0),
    ("RUL nodule measuring 0.7 cm, previously 0.5 cm.", 7.0),
    ("RUL nodule measuring 8 mm (previously 6 mm).", 8.0),
    ("RUL nodule increased from 4 to 6 mm.", 6.0),
    ("RUL nodule, now 5 mm from 8 mm.", 5.0),
    ("RUL nodule 6 mm, 4 mm on the prior study.", 6.0),
    ("12 mm part-solid RUL nodule with a 5 mm solid component.", 12.0),
    ("Part-solid RUL nodule increased from 1.0 cm to 1.3 cm; its solid component increased from 2 to 5 mm.", 13.0),
    ("RUL nodule (volume 120 mm3) measuring 6 mm.", 6.0),
    ("On 1.25 mm slices, a 6 mm RUL nodule.", 6.0),
])
def test_sizes(text, size):
    (f,) = extract_findings(text)
    assert f.diameter_mm == pytest.approx(size)


@pytest.mark.parametrize("text, texture", [
    ("A 6 mm solid RUL nodule.", "solid"),
    ("A 6 mm RUL nodule of soft tissue attenuation.", "solid"),
    ("A 6 mm part-solid RUL nodule.", "part_solid"),
    ("A 6 mm part solid RUL nodule.", "part_solid"),
    ("A 6 mm mixed attenuation RUL nodule.", "part_solid"),
    ("A 6 mm semisolid RUL nodule.", "part_solid"),
    ("A 6 mm subsolid RUL nodule with a solid component.", "part_solid"),
    ("A 6 mm ground-glass nodule in the RUL.", "ground_glass"),
    ("A 6 mm ground glass nodule in the RUL.", "ground_glass"),
    ("6 mm GGO in the RUL.", "ground_glass"),
    ("6 mm GGN in the RUL.", "ground_glass"),
    ("A 6 mm nonsolid RUL nodule.", "ground_glass"),
    ("A 6 mm non-solid RUL nodule.", "ground_glass"),
    ("A 6 mm subsolid RUL nodule.", ""),
    ("A 6 mm RUL nodule.", ""),
])
def test_textures(text, texture):
    (f,) = extract_findings(text)
    assert f.texture == texture


@pytest.mark.parametrize("text, expected", [
    ("No suspicious nodules.", ["negated"]),
    ("No new or enlarging nodules.", ["negated"]),
    ("No pulmonary nodule is seen.", ["negated"]),
    ("The lungs are clear without nodules.", ["negated"]),
    ("Nodules: none.", ["negated"]),
    ("Previously seen RUL nodule has resolved.", ["resolved"]),
    ("The RUL nodule seen on the prior study is no longer visualized.", ["resolved"]),
    ("The previously described lingular nodule is not seen today.", ["resolved"]),
    ("A right lobe thyroid nodule measuring 1.5 cm.", ["non_pulmonary"]),
    ("1.2 cm nodule in the right lobe of the thyroid.", ["non_pulmonary"]),
    ("Left adrenal nodule, 1.3 cm.", ["non_pulmonary"]),
    ("Thyroid:\n- 9 mm nodule in the left lobe.", ["non_pulmonary"]),
    ("Stable calcified granuloma in the right middle lobe.", ["calcified"]),
    ("A 6 mm noncalcified RUL nodule.", ["current"]),
    ("A 6 mm non-calcified RUL nodule.", ["current"]),
    ("A 6 mm RUL nodule without calcification.", ["current"]),
    ("There is no change in the 6 mm RUL nodule.", ["current"]),
    ("New 6 mm RUL nodule, not present on prior.", ["current"]),
    ("High-resolution images show a 6 mm RUL nodule.", ["current"]),
    ("No follow-up is needed for nodules < 6 mm.", ["negated"]),
    ("If a new nodule develops, consider follow-up.", ["hypothetical"]),
    ("The 5 mm nodule in the RML is unchanged and the 4 mm LLL nodule has resolved.", ["current", "resolved"]),
    ("No new nodules; stable 5 mm LLL nodule.", ["negated", "current"]),
    ("No new nodules, and the 5 mm LLL nodule is stable.", ["negated", "current"]),
    ("RUL, RML and LLL nodules have resolved.", ["resolved", "resolved", "resolved"]),
])
def test_statuses(text, expected):
    assert statuses(text) == expected


def test_several_nodules_in_one_sentence():
    assert found("There is a 6 x 4 mm solid nodule in the right upper lobe (series 3, image 45) and a 4 mm "
                 "ground-glass nodule in the left lower lobe (series 3, image 88).") == [
        (RUL, 3, 45, 5.0, "solid"), (LLL, 3, 88, 4.0, "ground_glass")]
    # One plural word shared by two places; its texture goes to both.
    assert found("Solid nodules in the RUL (3:45, 6 mm) and LLL (3:88, 4 mm).") == [
        (RUL, 3, 45, 6.0, "solid"), (LLL, 3, 88, 4.0, "solid")]
    assert found("Two right upper lobe nodules measuring 6 mm (3:45) and 4 mm (3:50).") == [
        (RUL, 3, 45, 6.0, ""), (RUL, 3, 50, 4.0, "")]
    assert found("Bilateral lower lobe nodules: right 5 mm (4:190), left 6 mm (4:202).") == [
        (RLL, 4, 190, 5.0, ""), (LLL, 4, 202, 6.0, "")]
    # A lobe alone next to another is the place, not a second nodule.
    assert found("A 6 mm nodule in the RLL (3:80) near the RML.") == [(RLL, 3, 80, 6.0, "")]


def test_lists_records_and_continuations():
    assert found("Nodules:\n1. RUL, 6.0 mm, solid, series 3 image 45\n2. LLL, 4.2 mm, ground glass, 3/88") == [
        (RUL, 3, 45, 6.0, "solid"), (LLL, 3, 88, 4.2, "ground_glass")]
    assert found("Location: RUL  Size: 6 mm  Series/Image: 3/45  Type: solid") == [(RUL, 3, 45, 6.0, "solid")]
    assert found("Nodule 1\nLocation: RUL\nSize: 6 mm\nSeries/Image: 3/45\nType: Solid\n\nNodule 2\n"
                 "Location: lingula\nSize: 0.7 x 0.5 cm\nSeries/Image: 3/99\nType: part-solid") == [
        (RUL, 3, 45, 6.0, "solid"), (LING, 3, 99, 6.0, "part_solid")]
    # "It measures ..." completes the nodule named just before.
    assert found("There is a solid nodule in the superior segment RLL. It measures 8 mm (previously 6 mm) on "
                 "axial image 63.") == [(RLL, None, 63, 8.0, "solid")]
    # The impression names the nodule of the findings again: one finding.
    assert found("FINDINGS: 6 mm solid RUL nodule (3:45).\nIMPRESSION: 6 mm right upper lobe nodule.") == [
        (RUL, 3, 45, 6.0, "solid")]


def test_mentions_keep_their_text_and_order():
    text = "No new nodules. A 6 mm RUL nodule (3:45). 1.2 cm thyroid nodule."
    assert extract_mentions(text) == [
        Finding(-1, None, None, None, "", "negated", "No new nodules."),
        Finding(RUL, 3, 45, 6.0, "", "current", "A 6 mm RUL nodule (3:45)."),
        Finding(-1, None, None, 12.0, "", "non_pulmonary", "1.2 cm thyroid nodule."),
    ]
    assert extract_findings("") == [] and extract_mentions("Heart size normal.") == []


def test_not_refs_and_not_sizes():
    # A date is no series/image; a thickness, a distance and a growth are no size.
    assert found("Stable 4 mm RUL nodule since 12/2019.") == [(RUL, None, None, 4.0, "")]
    assert found("RUL nodule 3 mm from the pleura.") == [(RUL, None, None, None, "")]
    assert found("RUL nodule, increased by 2 mm.") == [(RUL, None, None, None, "")]


def test_import_needs_no_nlp_library():
    code = ("import sys, deepem.emr, deepem.emr.reports; "
            "assert not any(m.split('.')[0] in ('spacy', 'medspacy', 'thinc') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- (b) the corpus --------------------------------------------------------------------------------

def test_corpus_size_and_styles():
    styles = {p.style for p in corpus.PASSAGES}
    negatives = [p for p in corpus.PASSAGES if not p.expected]
    assert len(corpus.PASSAGES) >= 70 and len(styles - set(corpus.NEGATIVE_STYLES)) >= 10
    assert len(negatives) >= 15 and all(p.style in corpus.NEGATIVE_STYLES for p in negatives)


def test_corpus_score():
    table = corpus.score(extract_findings)
    print("\n" + corpus.score_table(extract_findings))
    nodules = sum(row["nodules"] for row in table.values())
    right = sum(row["right"] for row in table.values())
    assert right / nodules >= 0.90


@pytest.mark.parametrize("passage", [p for p in corpus.PASSAGES if not p.expected], ids=lambda p: p.text[:40])
def test_negative_passages_give_nothing(passage):
    assert extract_findings(passage.text) == []


# ---- (c) the phantom's reports read back -------------------------------------------------------------

TEXTURE_NAME = {"solid": "solid", "part-solid": "part_solid", "ggo": "ground_glass"}


def random_nodules(rng, n):
    diameters = np.exp(rng.normal(np.log(6.6), 0.55, size=n)).clip(3, 30)
    return [dict(id=k, lobe=int(rng.integers(6)), series=int(rng.integers(2, 8)), image=int(rng.integers(10, 400)),
                 diameter_mm=float(d), texture=("solid", "part-solid", "ggo")[rng.choice(3, p=[0.75, 0.10, 0.15])])
            for k, d in enumerate(diameters)]


def random_prior(rng, nodules):
    """Most current nodules seen before at another size, and sometimes one that has gone."""
    prior = [dict(n, diameter_mm=n["diameter_mm"] * rng.uniform(0.7, 1.1)) for n in nodules if rng.random() < 0.7]
    if rng.random() < 0.5:
        prior.append(dict(id=99, lobe=int(rng.integers(6)), series=3, image=50, diameter_mm=5.0, texture="solid"))
    return prior


@pytest.mark.parametrize("block", range(4))
def test_phantom_reports_give_back_the_planted_nodules(block):
    for seed in range(block * 150, (block + 1) * 150):
        rng = np.random.default_rng(seed)
        nodules = random_nodules(rng, int(rng.integers(0, 4)))
        prior = random_prior(rng, nodules) if rng.random() < 0.4 else None
        text = write_report(rng, nodules, prior)
        got = extract_findings(text)
        assert len(got) == len(nodules), (seed, text)
        for f, n in zip(got, nodules):
            assert (f.lobe, f.series, f.image, f.texture) == (n["lobe"], n["series"], n["image"],
                                                              TEXTURE_NAME[n["texture"]]), (seed, text)
            assert f.diameter_mm == pytest.approx(written_diameter_mm(n["diameter_mm"]), abs=0.05), (seed, text)


def test_phantom_reports_use_every_style_and_their_distractors_give_nothing():
    first_lines = set()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        text = write_report(rng, [])            # only the sentences that are not current nodules
        first_lines.add(text.split("\n")[0][:10])
        assert extract_findings(text) == [], (seed, text)
        assert all(m.status != "current" for m in extract_mentions(text))
    assert len(first_lines) >= 5 and len(STYLES) >= 5


def test_phantom_report_is_a_function_of_the_rng():
    nodules = random_nodules(np.random.default_rng(0), 2)
    a = write_report(np.random.default_rng(7), nodules)
    assert a == write_report(np.random.default_rng(7), nodules)
    assert written_diameter_mm(6.44) == 6.4 and written_diameter_mm(9.96) == 10.0 and written_diameter_mm(12.6) == 13.0
