"""Shard checks (every bad input names its shard) and the tf.data input pipeline."""

from pathlib import Path

import numpy as np
import pytest

from components.common import shards as data
from components.common.errors import DatasetError


def test_class_weights_balance_and_cap():
    w = data.class_weights([730, 70, 150, 25, 25])
    assert w[0] < 1 < w[1]
    assert w[3] == pytest.approx(8.0)  # 1000 / (5 * 25), under the cap
    assert data.class_weights([1000, 1, 0])[1] == 10.0
    assert data.class_weights([1000, 1, 0])[2] == 1.0


def test_empty_split_names_the_folder(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetError, match=r"split 'val' is empty.*val"):
        data.split_shards(tmp_path, "val")


def test_missing_manifest_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="manifest.json"):
        data.read_manifest(str(tmp_path))


@pytest.mark.slow
def test_label_out_of_range_names_the_shard(tmp_path, shard_tools):
    img = shard_tools.draw_oct(0, np.random.default_rng(0), 32)
    shard = tmp_path / "train" / "train-00001-of-00002.tfrecord.gz"
    shard_tools.write_shard(shard, [shard_tools.record(img, 0, "a", "p", "oct"),
                                    shard_tools.record(img, 7, "b", "p", "oct")])
    with pytest.raises(DatasetError, match=r"train-00001-of-00002\.tfrecord\.gz, record 1: label 7 out of range"):
        data.scan_shards([shard], 4, "oct")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("features", "message"),
    [({"label": 1, "image_id": b"x"}, "'image'"),
     ({"image": b"PNG", "label": b"one", "image_id": b"x"}, "'label'"),
     ({"image": b"not a png", "label": 1, "image_id": b"x"}, "not a PNG")],
)
def test_wrong_or_missing_feature_names_the_shard(tmp_path, shard_tools, features, message):
    shard = tmp_path / "bad-shard.tfrecord.gz"
    shard_tools.write_shard(shard, [shard_tools.example_bytes(features)])
    with pytest.raises(DatasetError, match="bad-shard.tfrecord.gz") as info:
        data.scan_shards([shard], 4, "oct")
    assert message in str(info.value)


@pytest.mark.slow
def test_corrupt_file_and_wrong_modality_name_the_shard(tmp_path, shard_tools):
    broken = tmp_path / "broken.tfrecord.gz"
    broken.write_bytes(b"\x1f\x8b this is not gzip")
    with pytest.raises(DatasetError, match="broken.tfrecord.gz"):
        data.scan_shards([broken], 4)
    img = shard_tools.draw_fundus(0, np.random.default_rng(0), 32)
    fundus = tmp_path / "fundus.tfrecord.gz"
    shard_tools.write_shard(fundus, [shard_tools.record(img, 0, "a", "p", "fundus")])
    with pytest.raises(DatasetError, match="fundus.tfrecord.gz.*modality 'fundus'"):
        data.scan_shards([fundus], 4, "oct")


@pytest.mark.slow
def test_dataset_resizes_larger_shards_and_weights_samples(tiny_oct_data: Path):
    shards = data.split_shards(tiny_oct_data, "train")
    scan = data.scan_shards(shards, 4, "oct")
    assert scan.count == 64 and scan.per_class == [16, 16, 16, 16]
    ds = data.make_dataset(shards, "oct", 32, batch_size=8, training=True, weights=[1.0, 2.0, 3.0, 4.0])
    x, y, w = next(iter(ds))
    assert x.shape == (8, 32, 32, 3) and x.dtype.name == "float32"
    assert float(np.min(x)) >= 0.0 and float(np.max(x)) <= 1.0
    assert np.allclose(w.numpy(), np.asarray([1.0, 2.0, 3.0, 4.0])[y.numpy()])
    # grey OCT replicated to RGB
    assert np.allclose(x[..., 0], x[..., 1]) and np.allclose(x[..., 1], x[..., 2])


@pytest.mark.slow
def test_oct_augmentation_is_horizontal_flip_only_and_fundus_varies_more():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    image = tf.constant(rng.random((32, 32, 3), dtype=np.float32))
    flipped = image.numpy()[:, ::-1]
    outcomes = set()
    for s in range(12):
        out = data.augment(image, tf.constant([s, 7], tf.int64), "oct").numpy()
        assert np.array_equal(out, image.numpy()) or np.array_equal(out, flipped)
        outcomes.add(np.array_equal(out, flipped))
    assert outcomes == {True, False}
    for s in range(4):
        out = data.augment(image, tf.constant([s, 7], tf.int64), "fundus").numpy()
        assert out.shape == (32, 32, 3) and out.min() >= 0 and out.max() <= 1
        assert not np.array_equal(out, image.numpy()) and not np.array_equal(out, flipped)
    same = [data.augment(image, tf.constant([3, 7], tf.int64), "fundus").numpy() for _ in range(2)]
    assert np.array_equal(*same)
