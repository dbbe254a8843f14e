"""Phantom version 2 (chest_tf.data.phantom): variants, per-pixel masks that hold what is drawn,
broad placement, film distractors, the shortcut marker, difficulty and label noise, random labels,
the masks file; and version 1 unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from chest_tf.data import phantom
from chest_tf.data.phantom import anatomy, version2
from chest_tf.data.info import get_info

LABELS = phantom.PHANTOM_LABELS


def _same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# --- version 1 stays as it was ------------------------------------------------------------------

def test_version_1_is_unchanged():
    """The first 40 train images of seed 0 at 28 px as the generator made them before version 2
    (labels and boxes exactly; pixels to the last bit on this platform, to rounding elsewhere)."""
    images, labels, boxes = phantom.generate_split(28, 40, 0, "train")
    assert labels.sum(axis=0).tolist() == [5, 5, 5, 10, 1, 0, 4, 1, 5, 4, 2, 1, 3, 3]
    assert float(np.nansum(boxes)) == 2819.0
    assert abs(float(images.astype(np.float64).mean()) - 126.9625956632653) < 0.01
    assert np.abs(images[0, 10:14, 10:14].astype(int) - np.array(
        [[77, 83, 85, 82], [82, 87, 86, 86], [88, 96, 100, 98], [80, 94, 98, 97]])).max() <= 1
    # the default variant and an explicit "phantom" are version 1
    _same(phantom.generate_split(28, 5, 0, "train"), phantom.generate_split(28, 5, 0, "train", variant="phantom"))
    assert phantom.generate(28, 3, 0).masks is None


# --- variants and the catalogue -----------------------------------------------------------------

def test_variants_match_the_catalogue_and_file_names():
    for name, variant in phantom.VARIANTS.items():
        info = get_info(name)
        assert info.generated and info.labels == LABELS
        assert info.split_sizes == variant.default_counts
        for size in phantom.SIZES:
            assert phantom.variant_for_path(f"/d/{info.filename(size)}") is variant
    assert phantom.variant_for_path("elsewhere/my_file.npz").name == "phantom"
    assert phantom.variant_for_path("phantom2_99.npz").name == "phantom"
    with pytest.raises(ValueError, match="unknown phantom variant"):
        phantom.get_variant("phantom3")


def test_location_kinds():
    assert set(phantom.LOCATION_KINDS) == set(LABELS)
    assert {n for n, k in phantom.LOCATION_KINDS.items() if k == "global"} == {"cardiomegaly", "edema", "emphysema",
                                                                              "fibrosis"}
    assert phantom.LOCATION_KINDS["hernia"] == "fixed"
    assert len(phantom.LOCALISABLE) == 9 and "nodule" in phantom.LOCALISABLE


# --- determinism ---------------------------------------------------------------------------------

def test_version_2_is_deterministic_chunk_free_and_independent_of_version_1():
    whole = phantom.generate(28, 30, 4, "train", variant="phantom2")
    again = phantom.generate(28, 30, 4, "train", variant="phantom2")
    tail = phantom.generate(28, 12, 4, "train", start=18, variant="phantom2")
    for field in ("images", "labels", "drawn", "boxes", "distractors", "lungs"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(again, field))
        np.testing.assert_array_equal(getattr(whole, field)[18:], getattr(tail, field))
    np.testing.assert_array_equal(whole.masks, again.masks)
    keep = whole.mask_index[:, 0] >= 18
    np.testing.assert_array_equal(whole.masks[keep], tail.masks)
    np.testing.assert_array_equal(whole.mask_index[keep] - [18, 0], tail.mask_index)
    assert not np.array_equal(whole.images, phantom.generate_split(28, 30, 4, "train")[0])


# --- masks ---------------------------------------------------------------------------------------

def test_masks_are_listed_exactly_for_the_drawn_findings():
    data = phantom.generate(64, 60, 1, "test", variant="phantom2")
    rows, cols = np.nonzero(data.drawn)
    assert sorted(map(tuple, data.mask_index.tolist())) == sorted(zip(rows.tolist(), cols.tolist()))
    assert data.masks.shape == (len(rows), 64, 64) and data.masks.dtype == bool
    assert data.masks.any(axis=(1, 2)).all()
    # boxes are the masks' bounding boxes (in pixels of the internal render, so within a pixel)
    for (i, k), mask in zip(data.mask_index, data.masks):
        ys, xs = np.nonzero(mask)
        x0, y0, x1, y1 = data.boxes[i, k]
        assert x0 - 1 <= xs.min() and xs.max() + 1 <= x1 + 1 and y0 - 1 <= ys.min() and ys.max() + 1 <= y1 + 1
    assert np.isnan(data.boxes[data.drawn == 0]).all()


@pytest.mark.parametrize("size", [28, 64])
def test_masks_cover_what_each_finding_draws(size):
    """Render the same cases with one finding switched on and off: every pixel the finding changes
    noticeably lies in its mask (a nodule's or a mass's disc wholly), and nearly all of the change."""
    n = 10
    variant = phantom.get_variant("phantom2")
    base = phantom.stack_cases_v2([phantom.draw_case_v2(phantom.image_rng_v2(0, "cover", i), size) for i in range(n)])
    factor = anatomy._render_factor(size)
    no_marker = np.zeros(n, bool)

    def render(drawn):
        p = dict(base, drawn=drawn, labels=drawn)
        density, found, *_ = phantom.render_v2(phantom.apply_volume_changes_v2(p, 1.0), size, variant, no_marker)
        return anatomy._area_downsample(density, factor), anatomy._any_downsample(found, factor)

    empty, _ = render(np.zeros_like(base["drawn"]))
    for k, name in enumerate(LABELS):
        if phantom.LOCATION_KINDS[name] == "global":
            continue
        drawn = np.zeros_like(base["drawn"])
        drawn[:, k] = 1
        image, masks = render(drawn)
        change = np.abs(image - empty)
        for i in range(n):
            mask = masks[i, k]
            total = change[i].sum()
            assert total > 0, f"{name} drew nothing in case {i}"
            assert change[i][mask].sum() / total > 0.97, f"{name} drawn outside its mask in case {i}"
            strong = change[i] > 0.1 * change[i].max()
            if name in ("nodule", "mass"):
                assert mask[strong].all(), f"{name}'s disc is not inside its mask in case {i}"
            else:
                assert mask[strong].mean() > 0.97, f"{name} in case {i}"


def test_focal_findings_are_placed_broadly():
    """Nodule centres spread over both lungs and all heights; effusions on both sides; masses and
    consolidations on both sides."""
    data = phantom.generate(28, 1000, 0, "train", variant="phantom2")
    centre = {}
    for (i, k), mask in zip(data.mask_index, data.masks):
        ys, xs = np.nonzero(mask)
        centre.setdefault(LABELS[k], []).append((xs.mean(), ys.mean()))
    for name in ("nodule", "mass", "consolidation", "pneumonia", "atelectasis", "effusion", "pneumothorax"):
        xy = np.array(centre[name])
        left, right = (xy[:, 0] < 14).mean(), (xy[:, 0] >= 14).mean()
        assert min(left, right) > 0.25, (name, left, right)
    nodules = np.array(centre["nodule"])
    assert np.ptp(nodules[:, 1]) > 12 and nodules[:, 1].std() > 3  # apex to base


# --- distractors, shortcut, difficulty, random labels -------------------------------------------

def test_distractors_appear_and_are_unrelated_to_the_labels():
    data = phantom.generate(28, 800, 2, "train", variant="phantom2")
    with_any = data.distractors.any(axis=(1, 2))
    assert 0.6 < with_any.mean() < 0.98
    sick = data.drawn.any(axis=1)
    assert abs(with_any[sick].mean() - with_any[~sick].mean()) < 0.08
    assert not data.marker.any()


def test_shortcut_marker_goes_with_pneumonia_in_train_and_val_only():
    k = LABELS.index("pneumonia")
    train = phantom.generate(28, 1000, 0, "train", variant="phantom2_shortcut")
    test = phantom.generate(28, 1000, 0, "test", variant="phantom2_shortcut")
    y = train.labels[:, k] > 0
    assert train.marker[y].mean() > 0.75 and train.marker[~y].mean() < 0.1
    yt = test.labels[:, k] > 0
    assert abs(test.marker[yt].mean() - test.marker[~yt].mean()) < 0.1
    assert (test.marker_masks.any(axis=(1, 2)) == test.marker).all()
    # the same patients as phantom2: only the marker differs
    plain = phantom.generate(28, 40, 0, "train", variant="phantom2")
    np.testing.assert_array_equal(plain.drawn, train.drawn[:40])
    unmarked = ~train.marker[:40]
    np.testing.assert_array_equal(plain.images[unmarked], train.images[:40][unmarked])


def test_hard_setting_is_subtler_with_noisy_labels():
    standard = phantom.generate(28, 1500, 0, "train", variant="phantom2")
    hard = phantom.generate(28, 1500, 0, "train", variant="phantom2_hard")
    np.testing.assert_array_equal(standard.drawn, hard.drawn)      # the same cases
    np.testing.assert_array_equal(standard.labels, standard.drawn)
    wrong = hard.labels != hard.drawn
    positives = hard.labels.sum()
    assert 0.07 < (wrong & (hard.labels > 0)).sum() / positives < 0.13     # ~10% of positives are false
    assert 0.07 < (wrong & (hard.drawn > 0)).sum() / hard.drawn.sum() < 0.13   # ~10% of drawn findings missed
    assert abs(hard.labels.mean() - hard.drawn.mean()) < 0.01
    # what a finding changes in the film is scaled by the difficulty's contrast
    n, size = 6, 28
    cases = phantom.stack_cases_v2([phantom.draw_case_v2(phantom.image_rng_v2(0, "hard", i), size) for i in range(n)])
    k = LABELS.index("consolidation")
    changes = []
    for name in ("phantom2", "phantom2_hard"):
        variant = phantom.get_variant(name)
        contrast = phantom.DIFFICULTIES[variant.difficulty].contrast
        drawn = np.zeros_like(cases["drawn"])
        images = []
        for on in (0, 1):
            drawn[:, k] = on
            p = phantom.apply_volume_changes_v2(dict(cases, drawn=drawn.copy(), labels=drawn.copy()), contrast)
            images.append(phantom.render_v2(p, size, variant, np.zeros(n, bool))[0])
        changes.append(np.abs(images[1] - images[0]).sum(axis=(1, 2)))
    np.testing.assert_allclose(changes[1] / changes[0], phantom.DIFFICULTIES["hard"].contrast, rtol=0.15)


def test_random_labels_permute_train_labels_and_val_copies_train():
    variant = phantom.get_variant("phantom2_randlabels")
    n = variant.default_counts["train"]
    train = phantom.generate(28, 60, 0, "train", variant=variant)
    val = phantom.generate(28, 20, 0, "val", variant=variant)
    plain = phantom.generate(28, 60, 0, "train", variant="phantom2")
    np.testing.assert_array_equal(train.images, plain.images)
    np.testing.assert_array_equal(val.images, plain.images[:20])
    np.testing.assert_array_equal(val.labels, train.labels[:20])
    np.testing.assert_array_equal(train.drawn, plain.drawn)
    assert not np.array_equal(train.labels, plain.labels)
    whole = version2._recorded_v2(0, "train", np.arange(n), phantom.get_variant("phantom2"))
    np.testing.assert_array_equal(train.labels, whole[version2._label_permutation(0, n)[:60]])
    with pytest.raises(ValueError, match="train images"):
        phantom.generate(28, 5, 0, "val", start=n - 2, variant=variant)


# --- the files ----------------------------------------------------------------------------------

def test_write_phantom_names_the_variant_and_writes_masks(tmp_path):
    counts = {"train": 20, "val": 6, "test": 9}
    path = phantom.write_phantom(tmp_path / "phantom2_hard_64.npz", size=64, counts=counts, seed=3, chunk=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantom2_hard_64.npz", "phantom2_hard_64_boxes.npz",
                                                         "phantom2_hard_64_masks.npz"]
    with np.load(path) as data:
        for split, n in counts.items():
            expected = phantom.generate(64, n, 3, split, variant="phantom2_hard")
            np.testing.assert_array_equal(data[f"{split}_images"], expected.images)
            np.testing.assert_array_equal(data[f"{split}_labels"], expected.labels)
            masks = phantom.read_masks(path, split)
            assert masks.size == 64 and masks.variant["name"] == "phantom2_hard"
            np.testing.assert_array_equal(masks.drawn, expected.drawn)
            np.testing.assert_array_equal(masks.index, expected.mask_index)
            np.testing.assert_array_equal(masks.masks(), expected.masks)
            np.testing.assert_array_equal(masks.distractors(), expected.distractors)
            np.testing.assert_array_equal(masks.lungs([0, 2]), expected.lungs[[0, 2]])
            rows = masks.row_of()
            i, k = expected.mask_index[-1]
            assert rows[i, k] == len(expected.mask_index) - 1 and (rows[expected.drawn == 0] == -1).all()
    assert masks.kinds == tuple(phantom.LOCATION_KINDS[n] for n in LABELS)
    # a version-1 name gets no masks file, and an empty split still writes
    v1 = phantom.write_phantom(tmp_path / "plain.npz", size=28, counts={"train": 3, "test": 0}, seed=0)
    assert not phantom.masks_path(v1).exists()
    empty = phantom.write_phantom(tmp_path / "phantom2.npz", size=28, counts={"train": 4, "test": 0}, seed=0)
    assert phantom.read_masks(empty, "test").masks().shape == (0, 28, 28)
    with pytest.raises(FileNotFoundError):
        phantom.read_masks(v1, "train")
