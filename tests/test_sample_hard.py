"""The 'hard' variant of the DLRSD-style sample archive."""
import numpy as np
import pytest
from PIL import Image

from archives import dlrsd, sample, sample_hard


def test_group_colours_are_pulled_together():
    own = np.array([sample.SURFACE[n][0] for n in dlrsd.CLASS_NAMES], np.float32)
    hard = sample_hard.class_colours(sample.SURFACE)
    for group in sample_hard.GROUPS:
        ids = [dlrsd.CLASS_NAMES.index(n) for n in group]
        if len(ids) > 1:  # spread within a group shrinks to 1 - COLOUR_SHARE
            np.testing.assert_allclose(np.ptp(hard[ids], axis=0),
                                       (1 - sample_hard.COLOUR_SHARE) * np.ptp(own[ids], axis=0),
                                       atol=1e-4)
            np.testing.assert_allclose(hard[ids].mean(0), own[ids].mean(0), atol=1e-3)
    cars = dlrsd.CLASS_NAMES.index("cars")  # a group of one keeps its colour
    np.testing.assert_allclose(hard[cars], own[cars])


def test_mixed_textures_half_own_half_partner():
    tex = np.random.default_rng(0).normal(size=(17, 4, 4)).astype(np.float32)
    mixed = sample_hard.mix_textures(tex)
    sea, water = dlrsd.CLASS_NAMES.index("sea"), dlrsd.CLASS_NAMES.index("water")
    np.testing.assert_allclose(mixed[sea], 0.5 * (tex[sea] + tex[water]))
    np.testing.assert_allclose(mixed[water], mixed[sea])


def test_hard_archive_layout_labels_and_determinism(tmp_path):
    scenes = ["harbor", "river"]
    a = sample.write_sample_archive(tmp_path / "a", seed=4, per_class=3, scenes=scenes,
                                    variant="hard")
    sample.write_sample_archive(tmp_path / "b", seed=4, per_class=3, scenes=scenes, variant="hard")
    sample.write_sample_archive(tmp_path / "c", seed=4, per_class=3, scenes=scenes)
    labels = dlrsd.read_multilabels(a["multi_labels"])
    assert sorted(labels) == [f"{s}{i:02d}" for s in scenes for i in range(3)]
    for stem, row in labels.items():
        scene = stem[:-2]
        seg, _ = dlrsd.decode_palette(np.asarray(Image.open(a["dlrsd"] / "Images" / scene /
                                                            f"{stem}.png").convert("RGB")))
        np.testing.assert_array_equal(row, dlrsd.classes_present(seg))
        img_a = np.asarray(Image.open(a["ucm"] / "Images" / scene / f"{stem}.tif"))
        img_b = np.asarray(Image.open(tmp_path / "b/UCMerced_LandUse/Images" / scene / f"{stem}.tif"))
        img_c = np.asarray(Image.open(tmp_path / "c/UCMerced_LandUse/Images" / scene / f"{stem}.tif"))
        np.testing.assert_array_equal(img_a, img_b)
        assert img_a.shape != img_c.shape or not np.array_equal(img_a, img_c)


def test_unknown_variant_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="variant: 'easy' is not one of default, hard"):
        sample.write_sample_archive(tmp_path, variant="easy")
