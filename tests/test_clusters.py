import numpy as np

from c2p_stream.clusters import av_direction, describe_clusters, direction_arrow, pairing_name


def test_describe_clusters_names_level_and_trend():
    t = np.linspace(0, 1, 50)
    rng = np.random.default_rng(0)
    shapes = [np.full(50, -0.6), 0.5 * t, 0.5 - 0.5 * t, np.full(50, 0.7)]
    contours = np.concatenate([s + 0.01 * rng.standard_normal((30, 50)) for s in shapes])
    labels = np.repeat(np.arange(4), 30)
    infos = describe_clusters(contours, labels, 4)
    assert [(i.level, i.trend) for i in infos] == [("low", "flat"), ("mid", "rising"), ("mid", "falling"), ("high", "flat")]
    assert all(abs(i.share - 0.25) < 1e-9 for i in infos) and len(infos[1].mean) == 50
    assert infos[1].name == "mid rising"


def test_empty_cluster_is_described_not_crashing():
    infos = describe_clusters(np.random.default_rng(0).standard_normal((20, 50)), np.zeros(20, int), 2)
    assert infos[1].level == "empty" and infos[1].share == 0.0


def test_pairing_and_direction():
    assert pairing_name(3, 2) == "A4-V3"
    assert av_direction("rising", "rising") == "north-east"
    assert av_direction("rising", "flat") == "north"
    assert av_direction("falling", "falling") == "south-west"
    assert av_direction("flat", "flat") == "still"
    assert direction_arrow("south-east") == "↘"
