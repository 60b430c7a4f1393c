"""The E-step's record terms (em.size_term, em.texture_term, em.pseudo_diameter): the weak
labels' recorded diameter and texture reach the posterior, the texture model against values
computed here, and tiny EM runs with the terms on."""
import json
import os

import numpy as np
import pytest
import torch

from deepem.data import datasets
from deepem.em import LobeModel, em_fit, texture
from deepem.em.estep import batch_records, box_geometry, label_posterior, posterior_and_picks
from deepem.ops import pseudo_boxes
from deepem.train import fit, load_config
from synthetic import identity_meta, make_preprocessed
from test_em import SHAPE, TINY, em_config


def write_weak_records(folder, uid, rows, shape, image=None):
    """<uid>_weak.npy [M, 4] (z, lobe, diameter, texture), its meta and optionally its image."""
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, uid)
    np.save(base + "_weak.npy", np.asarray(rows, dtype=np.float32).reshape(-1, 4))
    with open(base + "_meta.json", "w") as f:
        json.dump(identity_meta(uid, shape), f)
    if image is not None:
        np.save(base + "_clean.npy", image)


def test_load_weak_reads_old_two_column_files(tmp_path):
    np.save(tmp_path / "a_weak.npy", np.array([[10.0, 2.0]], np.float32))
    np.testing.assert_array_equal(datasets.load_weak(str(tmp_path), "a"), [[10, 2, np.nan, -1]])
    assert datasets.load_weak(str(tmp_path), "missing").shape == (0, 4)


def test_batch_records_pads_like_the_labels():
    weak = [np.array([[1, 0, 6.5, 2], [2, 1, np.nan, -1]], np.float32), np.zeros((0, 4), np.float32)]
    d, t = batch_records(weak, 3)
    np.testing.assert_array_equal(d.numpy(), [[6.5, np.nan, np.nan], [np.nan] * 3])
    assert t.tolist() == [[2, -1, -1], [-1, -1, -1]]


def test_size_term_reaches_the_posterior_only_when_on():
    # two proposals alike but for their diameter; the label records 8 voxels
    props = torch.tensor([[[0.0, 10.0, 5, 5, 8.0], [0.0, 10.0, 9, 9, 16.0]]])
    args = (props, torch.tensor([2]), torch.tensor([[10.0]]), torch.tensor([[0]]), torch.tensor([1]), None)
    weak_d = torch.tensor([[8.0]])
    off = load_config(overrides=["em.use_lobe=false"]).em
    on = load_config(overrides=["em.use_lobe=false", "em.size_term=true", "em.size_sigma=0.5"]).em
    lp_off, _ = label_posterior(*args, off, weak_d)
    lp_on, _ = label_posterior(*args, on, weak_d)
    np.testing.assert_allclose(lp_off[0, 0].exp().numpy(), [0.5, 0.5], rtol=1e-6)
    e = np.exp(-np.log(2.0) ** 2 / 0.5)
    np.testing.assert_allclose(lp_on[0, 0].exp().numpy(), [1 / (1 + e), e / (1 + e)], rtol=1e-5)


def test_core_features_of_a_uniform_sphere():
    image = np.full((30, 30, 30), 128, np.uint8)  # normalised 0
    zz, yy, xx = np.mgrid[:30, :30, :30]
    r2 = (zz - 15) ** 2 + (yy - 15) ** 2 + (xx - 15) ** 2
    image[r2 <= 16] = 192  # normalised 0.5, radius 4
    f = texture.core_features(image, np.array([[0, 15, 15, 15, 8.0], [0, 5, 5, 5, 8.0], [0, 15, 15, 15, 40.0]]))
    np.testing.assert_allclose(f[0], [0.5, 0.0])  # core radius 2: inside the sphere
    np.testing.assert_allclose(f[1], [0.0, 0.0])  # in the background
    values = (image[r2 <= 100].astype(np.float64) - 128) / 128  # core radius 10
    np.testing.assert_allclose(f[2], [values.mean(), values.std()])


def test_texture_model_is_the_weighted_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal([0.3, 0.05], [0.05, 0.01], (200, 2))
    b = rng.normal([-0.6, 0.15], [0.05, 0.02], (200, 2))
    feats = np.concatenate([a, b])
    model = texture.fit(feats, np.r_[np.zeros(200), np.full(200, 2)], np.ones(400))
    assert model[1] is None  # no part-solid label: no Gaussian
    np.testing.assert_allclose(model[0][0], a.mean(0))
    np.testing.assert_allclose(model[0][1], np.cov(a.T, bias=True) + texture.RIDGE * np.eye(2))
    lp = texture.log_probs(np.array([[0.3, 0.05], [-0.6, 0.15]]), model)
    assert lp[0, 0] > np.log(0.99) and lp[1, 2] > np.log(0.99)
    np.testing.assert_allclose(np.exp(lp[:, [0, 2]]).sum(1), 1.0)
    assert (lp[:, 1] == 0).all()  # the unfitted texture's column is a constant
    # weights: a class's points with weight 0 do not move it
    model2 = texture.fit(feats, np.zeros(400), np.r_[np.ones(200), np.zeros(200)])
    np.testing.assert_allclose(model2[0][0], a.mean(0))


def test_pseudo_diameter_from_the_record():
    props = torch.tensor([[[1.0, 12.0, 20, 20, 10], [1.0, 33.0, 30, 30, 6]]])
    merged = pseudo_boxes(props, torch.tensor([[[0], [1]]]))
    weak_d = torch.tensor([[7.5, float("nan")]])
    weak_z = torch.tensor([[12.0, 33.0]])
    out = box_geometry(merged, weak_z, load_config(overrides=["em.pseudo_diameter=record"]).em, weak_d)
    assert out.boxes[:, 3].tolist() == [7.5, 6.0]  # the record's where it has one
    assert box_geometry(merged, weak_z, load_config().em, weak_d).boxes[:, 3].tolist() == [10, 6]


def blobs(centres_values, shape=(40, 40, 40)):
    image = np.full(shape, 128, np.uint8)
    zz, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    for (z, y, x), v in centres_values:
        image[((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2) <= 9] = v
    return image


def test_texture_term_picks_the_proposal_that_looks_like_the_record(tmp_path):
    """Scans a and b: a 'ground glass' label at the slice of a faint blob and a 'solid' one at
    a dense blob's, one candidate each (the texture model learns from them). Scan c: both
    labels at one slice holding a faint and a dense blob that the detector scores alike.
    Without the texture term both of c's labels tie (MAP: the first); with it each picks its
    texture's blob."""
    faint, dense = 100, 200
    for uid in ("a", "b"):
        write_weak_records(tmp_path, uid, [[10, 0, np.nan, 2], [30, 0, np.nan, 0]], (40, 40, 40),
                           blobs([((10, 10, 10), faint), ((30, 30, 30), dense)]))
    write_weak_records(tmp_path, "c", [[20, 0, np.nan, 2], [20, 0, np.nan, 0]], (40, 40, 40),
                       blobs([((20, 10, 10), faint), ((20, 30, 30), dense)]))
    proposals = {u: torch.tensor([[1.0, 10.0, 10, 10, 6], [1.0, 30.0, 30, 30, 6]]) for u in ("a", "b")}
    proposals["c"] = torch.tensor([[1.0, 20.0, 10, 10, 6], [1.0, 20.0, 30, 30, 6]])
    uids = ["a", "b", "c"]
    base = ["em.method=map", "em.use_lobe=false"]
    off = posterior_and_picks(str(tmp_path), uids, proposals, LobeModel(), em_config(tmp_path, base), 0)
    on = posterior_and_picks(str(tmp_path), uids, proposals, LobeModel(),
                             em_config(tmp_path, base + ["em.texture_term=true", "em.texture_weight=1"]), 0)
    picked = lambda r: [(row[0], row[1], round(row[3])) for row in r.rows]  # noqa: E731 (scan, label, x of pick)
    assert picked(off)[4:] == [("c", 0, 10), ("c", 1, 10)]
    assert picked(on)[4:] == [("c", 0, 10), ("c", 1, 30)]  # ground glass -> the faint blob, solid -> the dense
    assert picked(on)[:4] == picked(off)[:4] == [("a", 0, 10), ("a", 1, 30), ("b", 0, 10), ("b", 1, 30)]


@pytest.mark.parametrize("more", [["em.size_term=true"], ["em.texture_term=true", "em.pseudo_diameter=record"],
                                  ["em.size_term=true", "em.calibrate=CAL"]])
def test_em_runs_with_the_record_terms(tmp_path, more):
    uids = make_preprocessed(tmp_path, n_scans=6, shape=SHAPE, seed=3)
    for u in uids:  # the weak labels record each nodule's diameter and a texture
        label = np.load(tmp_path / (u + "_label.npy"))
        weak = np.load(tmp_path / (u + "_weak.npy"))
        np.save(tmp_path / (u + "_weak.npy"), np.concatenate([weak, label[:, 3:4], np.zeros((len(weak), 1))], 1))
    (tmp_path / "full.txt").write_text("\n".join(uids[:2]) + "\n")
    (tmp_path / "weak.txt").write_text("\n".join(uids[2:5]) + "\n")
    (tmp_path / "cal.txt").write_text(uids[5] + "\n")
    config = em_config(tmp_path, ["data.train_split=" + str(tmp_path / "full.txt"), "data.val_split=",
                                  "em.weak_split=" + str(tmp_path / "weak.txt"), "optim.epochs=1",
                                  "run.out=" + str(tmp_path / "run")] +
                       [m.replace("CAL", str(tmp_path / "cal.txt")) for m in more])
    fit(load_config(overrides=TINY + ["data.root=" + str(tmp_path), "data.train_split=" + str(tmp_path / "full.txt"),
                                      "data.val_split=", "run.out=" + str(tmp_path / "init"), "optim.epochs=1"]))
    em_fit(config, init=str(tmp_path / "init" / "last.pt"))
    assert os.path.isfile(tmp_path / "run" / "last.pt")
    if any("calibrate" in m for m in more):
        records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        cal = [r for r in records if r.get("kind") == "calibration"]
        assert cal and cal[0]["size_sigma"] in (0.25, 0.35, 0.5, 0.7, 1.0)


def test_label_nodules_matches_mined_labels_by_z():
    from deepem.diagnostics import label_nodules

    truth = np.array([[10.0, 5, 5, 6], [40.0, 5, 5, 3], [41.0, 9, 9, 8]])
    # derived labels, in the truth's order: their own nodules
    assert label_nodules(np.array([[10.0, 0], [40.0, 1], [41.0, 2]]), truth).tolist() == [0, 1, 2]
    # mined: another order, one nodule without a label (a micronodule), z within a slice
    assert label_nodules(np.array([[42.0, 2], [9.0, 0]]), truth).tolist() == [2, 0]
    # a label far from every nodule has none; one nodule is never taken twice
    assert label_nodules(np.array([[25.0, 0], [40.4, 0], [40.6, 0]]), truth).tolist() == [-1, 1, 2]
    assert label_nodules(np.zeros((0, 4)), truth).tolist() == []
