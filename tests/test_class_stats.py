import numpy as np
import pytest

from poodle.data.class_stats import class_statistics, class_statistics_from_histograms


def test_statistics_and_groups():
    names = ("a", "b", "c")
    img1 = np.zeros((10, 10), np.uint8)  # a: 100 %
    img2 = np.zeros((10, 10), np.uint8)
    img2[0, :5] = 1  # b: 5 %
    img2[1, :] = 255  # ignore: 10 %
    stats = class_statistics([img1, img2], names)
    rows = {r.name: r for r in stats.rows}
    assert rows["a"].avg_pixel_pct == pytest.approx((100 + 85) / 2)
    assert rows["a"].total_pixel_pct == pytest.approx(185 / 2)
    assert rows["b"].avg_pixel_pct == pytest.approx(5.0)  # over the images containing b (Table 10), not all
    assert rows["b"].total_pixel_pct == pytest.approx(2.5)
    assert rows["b"].image_pct == pytest.approx(50.0)
    assert rows["c"].image_pct == 0.0
    assert (rows["a"].size, rows["a"].frequency) == ("L", "C")
    assert (rows["b"].size, rows["b"].frequency) == ("L", "C")
    assert (rows["c"].size, rows["c"].frequency) == ("S", "R")
    assert stats.ignore_pct == pytest.approx(5.0)
    assert stats.group(size="S") == ["c"] and stats.group(frequency="R") == ["c"]
    d = stats.to_dict()
    assert d["images"] == 2 and d["groups"]["rare"] == ["c"]


def test_thresholds_are_strict_like_the_paper():
    # Exactly 1 % average is Small; present in exactly 20 % of images is Rare.
    imgs = [np.zeros((10, 10), np.uint8) for _ in range(5)]
    imgs[0][0, 0] = 1  # 1 % in the one image of five that contains it
    rows = {r.name: r for r in class_statistics(imgs, ("bg", "x")).rows}
    assert rows["x"].avg_pixel_pct == 1.0 and rows["x"].image_pct == 20.0
    assert (rows["x"].size, rows["x"].frequency) == ("S", "R")
    imgs[1][0, :2] = 1  # a second image with 2 %: mean 1.5 % over the two containing images -> Large, Common
    rows = {r.name: r for r in class_statistics(imgs, ("bg", "x")).rows}
    assert rows["x"].avg_pixel_pct == pytest.approx(1.5) and (rows["x"].size, rows["x"].frequency) == ("L", "C")


def test_mean_over_images_of_different_sizes():
    # Shares are per image: 50 % of a 2x2 map and 10 % of a 10x10 map average to 30 %, not 10 / 104 px.
    a = np.array([[1, 1], [0, 0]], np.uint8)
    b = np.zeros((10, 10), np.uint8)
    b[0, :] = 1
    row = class_statistics([a, b], ("bg", "x")).rows[1]
    assert row.avg_pixel_pct == pytest.approx(30.0) and row.total_pixel_pct == pytest.approx(100 * 12 / 104)


def test_histograms_equal_label_maps():
    rng = np.random.default_rng(0)
    maps = [rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(6, 9 + i)) for i in range(4)]
    hists = np.stack([np.bincount(m.ravel(), minlength=256) for m in maps])
    ref = class_statistics(maps, ("a", "b", "c"))
    assert class_statistics_from_histograms(hists, [m.size for m in maps], ("a", "b", "c")) == ref


def test_markdown_is_table10_layout():
    md = class_statistics([np.array([[0, 0, 1]], np.uint8)], ("road", "sky")).to_markdown().splitlines()
    assert md[0] == "| Class | road | sky |"  # sorted by average pixel share
    assert [line.split("|")[1].strip() for line in md[2:]] == [
        "Avg Pix. % / Im.",
        "Total % of Pix.",
        "Total % of Im.",
        "Size Grp.",
        "Freq. Grp.",
    ]


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="no label maps"):
        class_statistics([], ("a",))


def test_median_frequency_weights_by_hand():
    from poodle.data.class_stats import median_frequency_weights

    # 3 images x 4 classes (+ an ignore column that counts nowhere). Class 3 never appears.
    h = np.zeros((3, 256), dtype=np.int64)
    h[0, [0, 1, 255]] = [90, 10, 50]  # image 0: 100 labelled pixels
    h[1, [0, 2]] = [50, 50]  # image 1: 100
    h[2, [0, 1]] = [180, 20]  # image 2: 200
    w = median_frequency_weights(h, 4)
    f = np.array([320 / 400, 30 / 300, 50 / 100])  # pixels of c / labelled pixels of the images containing c
    assert np.allclose(w[:3], np.median(f) / f) and w[3] == 0.0
    assert np.isclose(w[2], 1.0)  # the median class weighs 1
    assert np.all(median_frequency_weights(np.zeros((2, 256)), 4) == 0)
