"""Feature index and search: exact search equals brute force; incremental updates equal a fresh index; refusals."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from explain.backbones.base import Backbone, Preprocess
from explain.errors import UsageError
from explain.gallery import (
    FeatureIndex, GalleryEntry, IndexCorruptError, IndexMismatchError, NoIndexError, build_index, evaluate_purity,
    faiss_available, load_index, search,
)

# --------------------------------------------------------------------------------------------------------------
# helpers


def tiny_backbone(seed: int = 0, name: str = "tiny") -> Backbone:
    """A 2-conv network with a pooled 16-d feature layer ("4"); deterministic for a given seed."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3),
    ).eval()
    pre = Preprocess(resize=36, crop=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return Backbone(name=name, model=model, preprocess=pre, class_names=["a", "b", "c"], default_layer="2",
                    feature_layer="4", weights="none")


def write_image(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 40, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_gallery(root: Path, n_per_class: int = 3, classes: tuple[str, ...] = ("cats", "dogs")) -> list[Path]:
    paths = []
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            paths.append(write_image(root / name / f"img_{i}.png", seed=100 * c + i))
    return paths


def count_forward(model: nn.Module) -> list[int]:
    """Images that go through the model's first layer (appended per batch)."""
    seen: list[int] = []
    model[0].register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[0])))
    return seen


def brute_force(queries: np.ndarray, base: np.ndarray, k: int, metric: str, exclude=None):
    q = queries.astype(np.float64)
    b = base.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        d = 1.0 - q @ b.T
    else:
        d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if exclude is not None:
        d[np.arange(len(q)), exclude] = np.inf
    ids = np.array([np.lexsort((np.arange(len(b)), row))[:k] for row in d])
    return ids, np.take_along_axis(d, ids, axis=1)


# --------------------------------------------------------------------------------------------------------------
# search


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_exact_search_equals_brute_force(metric: str) -> None:
    rng = np.random.default_rng(1)
    base = (rng.normal(size=(2100, 96)) + 3.0).astype(np.float32)  # offset: large norms stress float32 rounding
    queries = np.concatenate([rng.normal(size=(300, 96)).astype(np.float32) + 3.0, base[:5] + 1e-3])
    ids, dists = brute_force(queries, base, 10, metric)
    # A tiny budget forces several chunks over both the base and the queries.
    for memory_mb in (0.5, 256):
        got = search(queries, base, 10, metric, memory_mb=memory_mb)
        assert got.ids.dtype == np.int64 and got.distances.dtype == np.float32
        np.testing.assert_array_equal(got.ids, ids)
        np.testing.assert_allclose(got.distances, dists, atol=1e-5, rtol=0)


def test_search_ties_exclusion_and_small_gallery() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(size=(50, 8)).astype(np.float32)
    base[30] = base[10]  # an exact duplicate: equal distances, lower row first
    got = search(base[[10]], base, 3, "l2")
    assert got.ids[0, :2].tolist() == [10, 30] and got.distances[0, 0] == 0.0
    # leave-one-out: the query's own row never comes back, its duplicate does, at distance 0
    loo = search(base, base, 4, "l2", exclude=np.arange(50))
    assert not (loo.ids == np.arange(50)[:, None]).any()
    assert loo.ids[10, 0] == 30 and loo.ids[30, 0] == 10 and loo.distances[10, 0] == 0.0
    ids, dists = brute_force(base, base, 4, "l2", exclude=np.arange(50))
    np.testing.assert_array_equal(loo.ids, ids)
    np.testing.assert_allclose(loo.distances, dists, atol=1e-5)
    # k larger than the gallery: every row, in order
    assert search(base[:1], base[:4], 10, "l2").ids.shape == (1, 4)
    with pytest.raises(UsageError):
        search(base, base, 0)
    with pytest.raises(UsageError):
        search(base, base, 3, "manhattan")
    with pytest.raises(UsageError, match="do not fit"):
        search(base[:, :4], base, 3)


@pytest.mark.skipif(not faiss_available(), reason="faiss not installed")
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_faiss_backend_gives_identical_results(metric: str) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(3000, 64)).astype(np.float32)
    queries = rng.normal(size=(100, 64)).astype(np.float32)
    a = search(queries, base, 8, metric, backend="torch")
    b = search(queries, base, 8, metric, backend="faiss")
    assert b.backend == "faiss"
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)
    c = search(base[:40], base, 5, metric, backend="faiss", exclude=np.arange(40))
    d = search(base[:40], base, 5, metric, backend="torch", exclude=np.arange(40))
    np.testing.assert_array_equal(c.ids, d.ids)


def test_purity_on_known_clusters() -> None:
    # Two tight clusters of 4 and one point of class "a" sitting inside cluster "b".
    rng = np.random.default_rng(4)
    a = rng.normal(0, 0.01, size=(4, 3)) + [0, 0, 0]
    b = rng.normal(0, 0.01, size=(4, 3)) + [10, 0, 0]
    stray = np.array([[10.0, 0.0, 0.05]])
    feats = np.concatenate([a, b, stray]).astype(np.float32)
    labels = ["a"] * 4 + ["b"] * 4 + ["a"]
    entries = [GalleryEntry(f"{i}.png", 1, 1, "0" * 64, lab) for i, lab in enumerate(labels)] + \
        [GalleryEntry("u.png", 1, 1, "0" * 64, None)]
    feats = np.concatenate([feats, np.zeros((1, 3), np.float32)])
    index = FeatureIndex(root=Path("."), entries=entries, features=feats, model={}, layer="x")
    report = evaluate_purity(index, ks=(1, 3))
    assert report.evaluated == 9 and report.unlabelled == 1
    # k=1: the 4 "a" are right, the 4 "b" are right, the stray (nearest: a "b") is wrong -> 8/9
    assert report.purity[1] == pytest.approx(8 / 9)
    # k=3: each "a" sees 3 "a" (3/3); each "b" sees 3 of {b,b,b,stray} -> the 3 nearest include the stray or not
    ids = search(feats[:9], feats[:9], 3, exclude=np.arange(9)).ids
    lab = np.array(labels)
    assert report.purity[3] == pytest.approx(float((lab[ids] == lab[:, None]).mean()))
    assert set(report.per_class) == {"a", "b"}
    assert report.notes == []  # "a" has 4 other members, "b" 3: enough for k <= 3
    assert evaluate_purity(index, ks=(1, 4)).notes == [
        "purity at k=4 cannot reach 1: 1 class has fewer than k other members: b (3)"]
    with pytest.raises(UsageError, match="labelled"):
        evaluate_purity(FeatureIndex(Path("."), entries[-1:], feats[-1:], {}, "x"))


# --------------------------------------------------------------------------------------------------------------
# building and updating


def test_build_index_stores_features_files_and_labels(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    make_gallery(gallery)
    bb = tiny_backbone()
    update = build_index(bb, gallery, tmp_path / "idx", labels="folders", workers=0, batch_size=4)
    index = update.index
    assert len(index) == 6 and index.dim == 16 and index.features.dtype == np.float32
    assert index.paths == [f"{c}/img_{i}.png" for c in ("cats", "dogs") for i in range(3)]
    assert [e.label for e in index.entries] == ["cats"] * 3 + ["dogs"] * 3
    assert update.added == index.paths and not update.errors
    # features equal the pooled layer output of a plain forward pass
    from explain.images import load_image

    x = torch.stack([bb.preprocess(load_image(gallery / p).image) for p in index.paths])
    with torch.no_grad():
        expected = bb.model[:5](x).flatten(1).numpy()
    np.testing.assert_allclose(index.features, expected, atol=1e-5)
    loaded = load_index(tmp_path / "idx")
    np.testing.assert_array_equal(loaded.features, index.features)
    assert loaded.entries == index.entries and loaded.layer == "4"
    entry = loaded.entries[0]
    st = (gallery / entry.path).stat()
    assert entry.size == st.st_size and entry.mtime_ns == st.st_mtime_ns
    from explain.images import file_sha256

    assert entry.sha256 == file_sha256(gallery / entry.path)


def test_labels_csv(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=2)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label,class_name,extra\ncats/img_0.png,0,tabby cat,x\n./dogs/img_1.png,1,dog,y\n"
                        "missing.png,1,dog,z\n")
    update = build_index(tiny_backbone(), gallery, None, labels=csv_path, workers=0)
    by_path = {e.path: e for e in update.index.entries}
    assert by_path["cats/img_0.png"].label == "0" and by_path["cats/img_0.png"].label_name == "tabby cat"
    assert by_path["dogs/img_1.png"].label_name == "dog"
    assert by_path["cats/img_1.png"].label is None
    assert any("missing" in w or "not (readable)" in w for w in update.warnings)
    assert any("have no label" in w for w in update.warnings)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,1\n")
    with pytest.raises(UsageError, match="path,label"):
        build_index(tiny_backbone(), gallery, None, labels=bad, workers=0)


def test_labels_csv_with_conflicting_rows_is_refused_before_embedding(tmp_path: Path, monkeypatch) -> None:
    """Issue 15: ``index --labels`` kept the last of two rows that label one image differently."""
    import explain.gallery as gallery_module

    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=2)
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\ncats/img_0.png,cat\ndogs/img_0.png,dog\n./cats/img_0.png,dog\n"
                        "dogs/img_0.png,dog\n")

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("embedded before the labels were checked")

    monkeypatch.setattr(gallery_module, "embed_files", no_embedding)
    with pytest.raises(UsageError) as info:
        build_index(tiny_backbone(), gallery, tmp_path / "idx", labels=csv_path, workers=0)
    assert str(info.value) == (f"--labels {str(csv_path)!r} gives 1 path(s) different labels (cats/img_0.png: "
                               "labels.csv lines 2 and 4 give it different labels: 'cat' and 'dog'): keep one row "
                               "per image")
    assert not (tmp_path / "idx").exists()


def test_incremental_update_equals_fresh_index(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    paths = make_gallery(gallery, n_per_class=4)
    bb = tiny_backbone()
    seen = count_forward(bb.model)
    build_index(bb, gallery, tmp_path / "idx", labels="folders", workers=0, batch_size=3)
    assert sum(seen) == 8
    seen.clear()

    # add one, change one (new bytes), delete one, touch one (new time, same bytes)
    write_image(gallery / "birds" / "new.png", seed=999)
    write_image(paths[1], seed=555)
    os.utime(paths[1], ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    paths[2].unlink()
    os.utime(paths[3], ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))

    update = build_index(bb, gallery, tmp_path / "idx", workers=0, batch_size=3)
    assert sum(seen) == 2  # only the new and the changed file went through the model
    assert update.added == ["birds/new.png"] and update.changed == ["cats/img_1.png"]
    assert update.removed == ["cats/img_2.png"] and update.unchanged == 6

    fresh = build_index(bb, gallery, tmp_path / "fresh", labels="folders", workers=0, batch_size=5).index
    incremental = load_index(tmp_path / "idx")
    assert incremental.paths == fresh.paths
    assert [e.sha256 for e in incremental.entries] == [e.sha256 for e in fresh.entries]
    assert [e.label for e in incremental.entries] == [e.label for e in fresh.entries]  # label source remembered
    assert [(e.size, e.mtime_ns) for e in incremental.entries] == [(e.size, e.mtime_ns) for e in fresh.entries]
    np.testing.assert_allclose(incremental.features, fresh.features, atol=1e-5)
    # only one generation of data files is left behind
    assert len(list((tmp_path / "idx").glob("features-*.npy"))) == 1
    assert len(list((tmp_path / "idx").glob("files-*.csv"))) == 1


def test_other_model_or_layer_is_refused(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=1)
    build_index(tiny_backbone(seed=0), gallery, tmp_path / "idx", workers=0)
    before = (tmp_path / "idx" / "index.json").read_text()
    with pytest.raises(IndexMismatchError, match="cannot be mixed"):
        build_index(tiny_backbone(seed=1), gallery, tmp_path / "idx", workers=0)  # other weights
    with pytest.raises(IndexMismatchError, match="layer"):
        build_index(tiny_backbone(seed=0), gallery, tmp_path / "idx", layer="3", workers=0)
    with pytest.raises(IndexMismatchError, match="name"):
        build_index(tiny_backbone(seed=0, name="other"), gallery, tmp_path / "idx", workers=0)
    assert (tmp_path / "idx" / "index.json").read_text() == before  # untouched
    update = build_index(tiny_backbone(seed=1), gallery, tmp_path / "idx", workers=0, rebuild=True)
    assert update.rebuilt and len(update.added) == 2


def test_another_gallery_folder_is_refused(tmp_path: Path) -> None:
    """QA: updating an index from another folder silently dropped the first folder's images and kept its labels."""
    from explain.gallery import GalleryMismatchError

    bb = tiny_backbone()
    make_gallery(tmp_path / "g1", n_per_class=2)
    make_gallery(tmp_path / "g2", n_per_class=1, classes=("birds",))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncats/img_0.png,cat\n")
    build_index(bb, tmp_path / "g1", tmp_path / "idx", labels=labels, workers=0)
    before = (tmp_path / "idx" / "index.json").read_text()
    with pytest.raises(GalleryMismatchError, match="built from the gallery .*g1.*--rebuild.*another --out"):
        build_index(bb, tmp_path / "g2", tmp_path / "idx", workers=0)
    assert (tmp_path / "idx" / "index.json").read_text() == before  # untouched
    # the same folder spelled another way is the same gallery
    same = build_index(bb, tmp_path / "g2" / ".." / "g1", tmp_path / "idx", workers=0)
    assert same.unchanged == 4 and not same.removed
    replaced = build_index(bb, tmp_path / "g2", tmp_path / "idx", workers=0, rebuild=True)
    assert replaced.rebuilt and replaced.index.paths == ["birds/img_0.png"] and replaced.index.labels is None
    assert load_index(tmp_path / "idx").root == (tmp_path / "g2").resolve()


def test_mismatch_hints_depend_on_the_caller(tmp_path: Path) -> None:
    """QA: neighbours/report were told to use --rebuild/--out (they have neither) and the other model's layer
    was named after the index's."""
    from explain.gallery import backbone_record, check_compatible

    make_gallery(tmp_path / "g", n_per_class=1)
    index = build_index(tiny_backbone(), tmp_path / "g", tmp_path / "idx", workers=0).index
    other = tiny_backbone(name="other")
    other.feature_layer = "5"
    record = backbone_record(other, "other.pt")
    with pytest.raises(IndexMismatchError) as query:  # default: a query (neighbours, report)
        check_compatible(index, record, index.layer)
    text = str(query.value)
    assert "this run uses other (weights none, layer 5)" in text and "--out folder" not in text
    assert "pass the index's model (--model tiny --weights none)" in text  # random weights: say so
    assert f"'cnn-explain index {(tmp_path / 'g').resolve()} --out {tmp_path / 'idx'} --model other " \
           "--weights other.pt --rebuild'" in text
    with pytest.raises(IndexMismatchError) as update:  # cnn-explain index: its own options
        check_compatible(index, record, "5", purpose="update")
    text = str(update.value)
    assert "use another --out folder" in text and "pass --rebuild to replace it" in text
    assert "--model tiny --weights none --layer 4" in text and "cnn-explain index" not in text
    check_compatible(index, backbone_record(tiny_backbone()), index.layer)  # the same model: fine
    with pytest.raises(ValueError, match="purpose"):
        check_compatible(index, record, purpose="other")


def test_corrupt_and_missing_index(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=1)
    build_index(tiny_backbone(), gallery, tmp_path / "idx", workers=0)
    with pytest.raises(NoIndexError, match="no feature index"):
        load_index(tmp_path)
    with pytest.raises(NoIndexError, match="no such index folder"):
        load_index(tmp_path / "nope")

    truncated = tmp_path / "t"
    shutil.copytree(tmp_path / "idx", truncated)
    feat = next(truncated.glob("features-*.npy"))
    feat.write_bytes(feat.read_bytes()[:-7])
    with pytest.raises(IndexCorruptError, match="corrupt.*checksum"):
        load_index(truncated)
    with pytest.raises(IndexCorruptError, match="not a NumPy array|shape"):
        load_index(truncated, verify=False)

    garbage = tmp_path / "j"
    shutil.copytree(tmp_path / "idx", garbage)
    (garbage / "index.json").write_text("{not json")
    with pytest.raises(IndexCorruptError, match="--rebuild"):
        load_index(garbage)
    # updating a corrupt index is refused; --rebuild replaces it
    with pytest.raises(IndexCorruptError):
        build_index(tiny_backbone(), gallery, garbage, workers=0)
    assert len(build_index(tiny_backbone(), gallery, garbage, workers=0, rebuild=True).index) == 2

    lost = tmp_path / "l"
    shutil.copytree(tmp_path / "idx", lost)
    next(lost.glob("files-*.csv")).unlink()
    with pytest.raises(IndexCorruptError, match="cannot read"):
        load_index(lost)
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["count"] == 2 and meta["dim"] == 16


def test_unreadable_images_are_listed_and_retried(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=2)
    (gallery / "cats" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (gallery / "empty.png").write_bytes(b"")
    update = build_index(tiny_backbone(), gallery, tmp_path / "idx", workers=0)
    assert len(update.index) == 4
    failed = {e.path: e.reason for e in update.errors}
    assert set(failed) == {"cats/broken.jpg", "empty.png"}
    assert "not an image" in failed["cats/broken.jpg"] and "empty" in failed["empty.png"]
    assert {s["path"] for s in load_index(tmp_path / "idx").skipped} == set(failed)
    again = build_index(tiny_backbone(), gallery, tmp_path / "idx", workers=0)
    assert {e.path for e in again.errors} == set(failed) and again.unchanged == 4  # reported again, not lost


def test_empty_or_hopeless_gallery(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        build_index(tiny_backbone(), tmp_path / "empty", None, workers=0)
    with pytest.raises(UsageError, match="does not exist"):
        build_index(tiny_backbone(), tmp_path / "missing", None, workers=0)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"xx")
    with pytest.raises(UsageError, match="could be read"):
        build_index(tiny_backbone(), bad, None, workers=0)


def test_workers_give_the_same_features(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=3)
    (gallery / "x.png").write_bytes(b"broken")
    a = build_index(tiny_backbone(), gallery, None, workers=0, batch_size=4)
    b = build_index(tiny_backbone(), gallery, None, workers=2, batch_size=4)
    assert a.index.paths == b.index.paths and [e.path for e in b.errors] == ["x.png"]
    np.testing.assert_allclose(a.index.features, b.index.features, atol=1e-6)


def test_channels_last_is_temporary_and_agrees(tmp_path: Path) -> None:
    from explain.gallery import embed_files
    from explain.images import find_images

    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=2)
    files, _ = find_images([gallery])
    bb = tiny_backbone()
    fast = embed_files(bb, files, channels_last=True)
    assert all(p.is_contiguous() for p in bb.model.parameters())  # the model is given back as it was
    plain = embed_files(bb, files, channels_last=False)
    np.testing.assert_allclose(fast.features, plain.features, atol=1e-5)


def test_labels_survive_a_deleted_labels_file(tmp_path: Path) -> None:
    gallery = tmp_path / "g"
    make_gallery(gallery, n_per_class=1)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\ncats/img_0.png,cat\ndogs/img_0.png,dog\n")
    build_index(tiny_backbone(), gallery, tmp_path / "idx", labels=labels, workers=0)
    labels.unlink()
    update = build_index(tiny_backbone(), gallery, tmp_path / "idx", workers=0)
    assert [e.label for e in update.index.entries] == ["cat", "dog"]
    assert any("no longer exists" in w for w in update.warnings)
