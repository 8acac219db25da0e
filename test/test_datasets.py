"""Dataset loaders on small files written in exactly the public layouts (the real data is not here).

Pixel values encode (corruption, severity, image, class), so each test can check from the decoded
tensors alone that corruptions, severities, images and labels arrive in the right order and aligned.
"""
from __future__ import annotations

import io
import pickle
import random
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from tta_perception.datasets import (CORRUPTIONS, DatasetError, build_source_loader, build_stream,
                                     reference_order)
from tta_perception.datasets._files import load_array_pickle

torch.set_num_threads(1)

N = 6  # images per severity in the generated CIFAR-C files (10,000 in the public ones)


# ------------------------------------------------------------------------------------ generators
def cifar_label(k: int, num_classes: int = 10) -> int:
    return (3 * k + 1) % num_classes


def make_cifar_c(root, n=N, corruptions=CORRUPTIONS, num_classes=10, labels_per_severity=False):
    """``<root>/<corruption>.npy`` uint8 (5n, 32, 32, 3), severities 1..5 stacked, + ``labels.npy``.

    Image k of severity s of corruption c is uniform with R = c, G = s, B = k.
    """
    root.mkdir(parents=True, exist_ok=True)
    for ci, c in enumerate(corruptions):
        arr = np.zeros((5 * n, 32, 32, 3), dtype=np.uint8)
        for s in range(1, 6):
            for k in range(n):
                arr[(s - 1) * n + k] = (CORRUPTIONS.index(c), s, k)
        np.save(root / f"{c}.npy", arr)
    base = np.array([cifar_label(k, num_classes) for k in range(n)], dtype=np.int64)
    np.save(root / "labels.npy", base if labels_per_severity else np.tile(base, 5))
    return root


def decode_codes(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [0, 1] -> per-image (R, G, B) codes read at pixel (0, 0)."""
    return np.rint(x[:, :, 0, 0].numpy() * 255).astype(int)


class Py2Pickler(pickle._Pickler):
    """Writes pickles the way the CIFAR archives were written (Python 2, protocol 2): every str is a
    byte string (SHORT_BINSTRING/BINSTRING) and arrays refer to ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()
    _reconstruct = np.ndarray(0).__reduce__()[0]

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        n = len(raw)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is self._reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def write_py2_pickle(path, obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue())


def cifar_rows(images_nhwc: np.ndarray) -> np.ndarray:
    """The CIFAR row layout: 1024 red, 1024 green, 1024 blue values per image."""
    return images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), 3072).copy()


def save_rgb(path, rgb, size=(224, 224), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(int(v) for v in rgb)).save(path, format=fmt)


# ------------------------------------------------------------------------------------- CIFAR-C
@pytest.fixture(scope="module")
def cifar10c(tmp_path_factory):
    return make_cifar_c(tmp_path_factory.mktemp("c10c") / "CIFAR-10-C")


def test_reference_order_matches_python_random_shuffle():
    samples = list(range(100))
    random.seed(1)
    random.shuffle(samples)
    assert reference_order(100, 1) == samples
    sub = random.sample(samples, k=10)  # the reference's NUM_EX after the shuffle
    assert reference_order(100, 1, 10) == sub
    assert reference_order(5, None) == [0, 1, 2, 3, 4]


def test_cifar10c_continual_order_shapes_and_labels(cifar10c):
    stream = build_stream("cifar10_c", cifar10c, severity=5, batch_size=4)
    assert stream.task == "cls" and stream.num_classes == 10 and stream.class_names[0] == "airplane"
    assert stream.domains == list(CORRUPTIONS)
    assert len(stream) == 15 * 2 and stream.num_samples == 15 * N
    expected_k = reference_order(N, 1)
    seen = {}
    for x, y, domain in stream:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32) and 0 <= x.min() <= x.max() <= 1
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        codes = decode_codes(x)
        assert (codes[:, 0] == CORRUPTIONS.index(domain)).all()      # right corruption file
        assert (codes[:, 1] == 5).all()                               # severity-5 slice
        assert y.tolist() == [cifar_label(k) for k in codes[:, 2]]    # labels aligned with images
        seen.setdefault(domain, []).extend(codes[:, 2].tolist())
    assert list(seen) == list(CORRUPTIONS)                            # corruptions in protocol order
    assert all(v == expected_k for v in seen.values())                # the reference's shuffle per domain


def test_cifar10c_severities_unshuffled_and_parent_root(cifar10c):
    # the parent folder works too (the archive extracts to CIFAR-10-C/)
    stream = build_stream("cifar10_c", cifar10c.parent, severity=[3, 1], batch_size=N, shuffle_seed=None,
                          corruptions=["fog", "snow"])
    batches = list(stream)
    assert [b.domain for b in batches] == ["fog_3", "fog_1", "snow_3", "snow_1"]
    for b in batches:
        codes = decode_codes(b.images)
        c, s = b.domain.rsplit("_", 1)
        assert (codes[:, 0] == CORRUPTIONS.index(c)).all() and (codes[:, 1] == int(s)).all()
        assert codes[:, 2].tolist() == list(range(N))


def test_cifar100c_labels_per_severity_and_num_samples(tmp_path):
    root = make_cifar_c(tmp_path / "c100", corruptions=CORRUPTIONS, num_classes=100,
                        labels_per_severity=True)
    stream = build_stream("cifar100_c", root, batch_size=200, num_samples=4)
    assert stream.num_classes == 100 and len(stream.class_names) == 100
    for x, y, _ in stream:
        codes = decode_codes(x)
        assert x.shape[0] == 4 and y.tolist() == [cifar_label(k, 100) for k in codes[:, 2]]
        assert codes[:, 2].tolist() == reference_order(N, 1, 4)


def test_mixed_and_correlated_settings(cifar10c):
    mixed = list(build_stream("cifar10_c", cifar10c, batch_size=200, setting="mixed_domains",
                              corruptions=["fog", "snow", "frost"]))
    assert len(mixed) == 1 and mixed[0].domain == "mixed"
    codes = decode_codes(mixed[0].images)
    assert sorted(set(codes[:, 0])) == sorted(CORRUPTIONS.index(c) for c in ("fog", "snow", "frost"))
    assert mixed[0].labels.tolist() == [cifar_label(k) for k in codes[:, 2]]
    corr = build_stream("cifar10_c", cifar10c, batch_size=200, setting="correlated", corruptions=["fog"])
    (batch,) = list(corr)
    assert batch.labels.tolist() == sorted(batch.labels.tolist())


def test_cifar_c_missing_truncated_corrupt_and_wrong_shape(tmp_path):
    root = make_cifar_c(tmp_path / "c", corruptions=CORRUPTIONS)
    path = root / "fog.npy"
    full = path.read_bytes()
    path.write_bytes(full[: len(full) // 2])  # an interrupted download
    with pytest.raises(DatasetError, match=r"fog\.npy: truncated"):
        build_stream("cifar10_c", root)
    path.write_bytes(b"this is not an npy file" * 10)
    with pytest.raises(DatasetError, match=r"fog\.npy: not a valid \.npy"):
        build_stream("cifar10_c", root)
    np.save(path, np.zeros((7, 32, 32, 3), dtype=np.uint8))  # not 5 severities
    with pytest.raises(DatasetError, match=r"fog\.npy: expected uint8 \(5\*n, 32, 32, 3\)"):
        build_stream("cifar10_c", root)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"fog\.npy"):
        build_stream("cifar10_c", root)
    with pytest.raises(FileNotFoundError):
        build_stream("cifar10_c", tmp_path / "nowhere")
    make_cifar_c(root, corruptions=["fog"])
    np.save(root / "labels.npy", np.arange(7))  # labels do not match 5 x 6 images
    with pytest.raises(DatasetError, match=r"labels\.npy"):
        build_stream("cifar10_c", root)


def test_bad_arguments(cifar10c):
    with pytest.raises(ValueError, match="severity"):
        build_stream("cifar10_c", cifar10c, severity=6)
    with pytest.raises(ValueError, match="unknown corruption"):
        build_stream("cifar10_c", cifar10c, corruptions=["rain"])
    with pytest.raises(ValueError, match="setting"):
        build_stream("cifar10_c", cifar10c, setting="gradual-ish")
    with pytest.raises(ValueError, match="unknown dataset"):
        build_stream("mnist_c", cifar10c)


# ---------------------------------------------------------------------------------- ImageNet-C
WNIDS = ("n02000000", "n01000000", "n03000000")  # created unsorted; labels follow sorted order
FILES = ("ILSVRC2012_val_00000007.JPEG", "ILSVRC2012_val_00000003.JPEG")


def imagenet_code(corruption, severity, wnid):
    return (8 + 16 * CORRUPTIONS.index(corruption), 40 * severity, 50 + 60 * sorted(WNIDS).index(wnid))


@pytest.fixture(scope="module")
def imagenetc(tmp_path_factory):
    """``<root>/<corruption>/<severity>/<wnid>/*.JPEG``, 224×224, for all 15 corruptions at severity 5
    and for fog at severity 3."""
    root = tmp_path_factory.mktemp("inc")
    for c in CORRUPTIONS:
        for s in ((5, 3) if c == "fog" else (5,)):
            for w in WNIDS:
                for f in FILES:
                    save_rgb(root / c / str(s) / w / f, imagenet_code(c, s, w), fmt="JPEG")
    return root


def check_imagenet_batch(batch, severity=5):
    x, y, domain = batch
    assert x.shape[1:] == (3, 224, 224)
    rgb = x[:, :, 100, 100].numpy() * 255
    for i in range(x.shape[0]):
        label = int(y[i])
        expect = imagenet_code(domain.split("_")[0] if domain[-1].isdigit() else domain, severity,
                               sorted(WNIDS)[label])
        assert np.abs(rgb[i] - np.array(expect)).max() < 8, (domain, label, rgb[i], expect)


def test_imagenetc_order_labels_and_batches(imagenetc):
    stream = build_stream("imagenet_c", imagenetc, batch_size=4, num_workers=0)
    assert stream.domains == list(CORRUPTIONS) and stream.info["images_per_domain"] == 6
    assert [len(b.images) for b in list(stream)[:2]] == [4, 2]  # batches never straddle domains
    for batch in stream:
        check_imagenet_batch(batch)
    # file order without shuffling: sorted <wnid>/<file>
    (first,) = list(build_stream("imagenet_c", imagenetc, batch_size=6, shuffle_seed=None,
                                 corruptions=["fog"], severity=3, num_workers=0))
    assert first.labels.tolist() == [0, 0, 1, 1, 2, 2]
    check_imagenet_batch(first, severity=3)


def test_imagenetc_subset_list_like_robustbench(imagenetc, tmp_path):
    lines = ["n03000000/ILSVRC2012_val_00000007.JPEG", "n01000000/ILSVRC2012_val_00000003.JPEG",
             "n02000000/ILSVRC2012_val_00000003.JPEG"]
    subset = tmp_path / "imagenet_test_image_ids.txt"
    subset.write_text("\n".join(lines))  # RobustBench's file has no trailing newline either
    stream = build_stream("imagenet_c", imagenetc, batch_size=64, subset_file=subset, shuffle_seed=None,
                          corruptions=["gaussian_noise", "contrast"], num_workers=0)
    batches = list(stream)
    assert [b.domain for b in batches] == ["gaussian_noise", "contrast"]
    for b in batches:
        assert b.labels.tolist() == [2, 0, 1]
        check_imagenet_batch(b)
    bad = tmp_path / "bad.txt"
    bad.write_text("n09999999/x.JPEG\n")
    with pytest.raises(DatasetError, match="bad.txt"):
        build_stream("imagenet_c", imagenetc, subset_file=bad)


def test_imagenetc_picks_up_subset_file_in_root_and_corrupt_jpeg(tmp_path):
    root = tmp_path / "ImageNet-C"
    for w in WNIDS:
        for f in FILES:
            save_rgb(root / "fog" / "5" / w / f, imagenet_code("fog", 5, w), fmt="JPEG")
    (root / "imagenet_test_image_ids.txt").write_text("n01000000/ILSVRC2012_val_00000007.JPEG\n")
    stream = build_stream("imagenet_c", tmp_path, corruptions=["fog"], num_workers=0)
    assert stream.num_samples == 1 and stream.info["image_list"].endswith("imagenet_test_image_ids.txt")
    jpeg = root / "fog" / "5" / "n01000000" / "ILSVRC2012_val_00000007.JPEG"
    jpeg.write_bytes(jpeg.read_bytes()[:100])
    with pytest.raises(DatasetError, match="ILSVRC2012_val_00000007.JPEG"):
        list(stream)


# ----------------------------------------------------------------------------------- CarlaTTA
SEQ_DIR = "day_night_1200/Town10HD/30/dynamic_day_night"


def make_carla(root, frames=3, size=(40, 24)):
    """CarlaTTA layout: ``<seq>/.../camera/<frame>.png`` + ``segmentation/<frame>.png`` (tag in red)."""
    rel = []
    w, h = size
    for i in range(frames):
        name = f"Town10HD-30-dynamic_day_night-{i:06d}.png"
        cam = root / SEQ_DIR / "camera" / name
        save_rgb(cam, (10 * i, 100, 200), size=size)
        seg = np.zeros((h, w, 3), dtype=np.uint8)
        seg[: h // 2, :, 0] = 13          # sky      -> 10
        seg[h // 2:, :, 0] = 7            # road     -> 0
        seg[h // 2:, : w // 4, 0] = 3     # "other"  -> 255 (ignored)
        seg[:, :, 1] = 77                 # green/blue carry instance ids in CARLA; must be ignored
        (root / SEQ_DIR / "segmentation").mkdir(parents=True, exist_ok=True)
        Image.fromarray(seg).save(root / SEQ_DIR / "segmentation" / name)
        rel.append(f"{SEQ_DIR}/camera/{name}")
    return rel


def test_carlatta_list_file_labels_and_order(tmp_path):
    rel = make_carla(tmp_path)
    (tmp_path / "day_night_1200.txt").write_text("\n".join(rel) + "\n")
    stream = build_stream("carlatta", tmp_path, sequence="day2night", image_size="native", num_workers=0,
                          batch_size=2)
    assert stream.task == "seg" and stream.num_classes == 14 and stream.domains == ["day2night"]
    assert stream.info["frame_list"].endswith("day_night_1200.txt")
    batches = list(stream)
    assert [len(b.images) for b in batches] == [2, 1]
    x = torch.cat([b.images for b in batches])
    y = torch.cat([b.labels for b in batches])
    assert x.shape == (3, 3, 24, 40) and y.shape == (3, 24, 40) and y.dtype == torch.int64
    assert decode_codes(x)[:, 0].tolist() == [0, 10, 20]  # frames in temporal order, never shuffled
    assert (y[:, :12] == 10).all() and (y[:, 12:, 10:] == 0).all() and (y[:, 12:, :10] == 255).all()


def test_carlatta_scan_without_list_and_resize(tmp_path):
    make_carla(tmp_path, frames=2, size=(64, 32))
    stream = build_stream("carlatta", tmp_path, sequence="day2night", image_size=16, num_workers=0)
    assert stream.info["frame_list"].startswith("scan of")
    batch = next(iter(stream))
    assert batch.images.shape == (1, 3, 16, 32) and batch.labels.shape == (1, 16, 32)
    assert set(batch.labels.unique().tolist()) <= {0, 10, 255}  # nearest: no blended class ids
    # the explicit list-file route, with a list kept anywhere
    lst = tmp_path / "lists" / "mine.txt"
    lst.parent.mkdir()
    lst.write_text(f"{SEQ_DIR}/camera/Town10HD-30-dynamic_day_night-000001.png\n")
    assert build_stream("carlatta", tmp_path, list_file=lst, image_size=16, num_workers=0).num_samples == 1
    with pytest.raises(FileNotFoundError, match="dynamic"):
        build_stream("carlatta", tmp_path, sequence="dynamic")
    (tmp_path / SEQ_DIR / "segmentation" / "Town10HD-30-dynamic_day_night-000000.png").unlink()
    with pytest.raises(FileNotFoundError, match="segmentation"):
        list(stream)


# ------------------------------------------------------------------------------------- folder
def test_folder_stream_domains_in_name_order(tmp_path):
    for i in range(3):
        save_rgb(tmp_path / "rec_b" / f"{i:04d}.png", (i, 0, 0), size=(20, 10))
    for i in range(2):
        save_rgb(tmp_path / "rec_a" / "cam0" / f"{i:04d}.jpg", (0, 0, 0), size=(20, 10))
    stream = build_stream("folder", tmp_path, batch_size=2, num_workers=0)
    assert stream.domains == ["rec_a", "rec_b"] and stream.num_samples == 5
    batches = list(stream)
    assert [(b.domain, len(b.images)) for b in batches] == [("rec_a", 2), ("rec_b", 2), ("rec_b", 1)]
    assert batches[1].labels is None and batches[1].images.shape == (2, 3, 10, 20)
    assert decode_codes(torch.cat([b.images for b in batches[1:]]))[:, 0].tolist() == [0, 1, 2]
    flat = build_stream("folder", tmp_path / "rec_b", image_size=(5, 8), num_workers=0)
    assert flat.domains == ["rec_b"] and next(iter(flat)).images.shape == (1, 3, 5, 8)


# ------------------------------------------------------------------------------ source data
def test_cifar10_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected_x, expected_y = [], []
    for i in range(1, 6):
        imgs = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        write_py2_pickle(folder / f"data_batch_{i}", {
            "batch_label": f"training batch {i} of 5", "labels": labels, "data": cifar_rows(imgs),
            "filenames": [f"img_{i}_{j}.png" for j in range(3)]})
        expected_x.append(imgs)
        expected_y += labels
    raw = (folder / "data_batch_1").read_bytes()
    assert raw.startswith(b"\x80\x02}q\x00(U\x0bbatch_label")  # py2 byte strings, as in the archive
    assert load_array_pickle(folder / "data_batch_1")["batch_label"] == b"training batch 1 of 5"
    loader = build_source_loader("cifar10_c", tmp_path, batch_size=4, shuffle=False)
    assert loader.num_samples == 15 and len(loader) == 4 and loader.num_classes == 10
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    want = torch.from_numpy(np.concatenate(expected_x)).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(x, want) and y.tolist() == expected_y
    # seeded shuffling: reproducible, different each epoch, fixed subset with num_samples
    a = [b[1].tolist() for b in build_source_loader("cifar10", tmp_path, batch_size=15, seed=3)]
    b = [b[1].tolist() for b in build_source_loader("cifar10", tmp_path, batch_size=15, seed=3)]
    assert a == b and sorted(a[0]) == sorted(expected_y)
    sub = build_source_loader("cifar10", tmp_path, batch_size=100, num_samples=5)
    e1, e2 = [next(iter(sub))[1].tolist() for _ in range(2)]
    assert len(e1) == 5 and sorted(e1) == sorted(e2)


def test_cifar100_python_train_file(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    imgs = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_py2_pickle(folder / "train", {"filenames": ["a"] * 4, "batch_label": "training batch 1 of 1",
                                        "fine_labels": [99, 0, 42, 7], "coarse_labels": [1, 2, 3, 4],
                                        "data": cifar_rows(imgs)})
    loader = build_source_loader("cifar100", tmp_path, batch_size=4, shuffle=False)
    x, y = next(iter(loader))
    assert y.tolist() == [99, 0, 42, 7] and loader.class_names[99] == "worm"
    assert torch.equal(x, torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)


class _Payload:
    """Unpickling this would create a marker file: the restricted unpickler must refuse it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_cifar_pickles_truncated_malicious_and_wrong_content(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    imgs = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    write_py2_pickle(folder / "train", {"fine_labels": [1, 2], "data": cifar_rows(imgs)})
    raw = (folder / "train").read_bytes()
    (folder / "train").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DatasetError, match=r"cifar-100-python/train: truncated pickle"):
        build_source_loader("cifar100", tmp_path)
    marker = tmp_path / "pwned"
    (folder / "train").write_bytes(pickle.dumps({"data": _Payload(marker)}, protocol=2))
    with pytest.raises(DatasetError, match="refusing to load global"):
        build_source_loader("cifar100", tmp_path)
    assert not marker.exists()
    write_py2_pickle(folder / "train", {"fine_labels": [1, 2], "data": np.zeros((2, 100), np.uint8)})
    with pytest.raises(DatasetError, match=r"'data' must be uint8 \(N, 3072\)"):
        build_source_loader("cifar100", tmp_path)
    write_py2_pickle(folder / "train", {"fine_labels": [1, 100], "data": cifar_rows(imgs)})
    with pytest.raises(DatasetError, match="labels outside"):
        build_source_loader("cifar100", tmp_path)
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        build_source_loader("cifar10", tmp_path)


def test_imagenet_train_folder(tmp_path):
    for ci, w in enumerate(sorted(WNIDS)):
        for j, size in enumerate(((50, 40), (40, 60))):
            save_rgb(tmp_path / "train" / w / f"{w}_{j}.JPEG", (50 + 60 * ci, 0, 0), size=size, fmt="JPEG")
    loader = build_source_loader("imagenet_c", tmp_path, batch_size=6, shuffle=False, image_size=32,
                                 num_workers=0)
    assert loader.num_classes == 3 and loader.task == "cls"
    x, y = next(iter(loader))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert np.abs(x[:, 0, 16, 16].numpy() * 255 - (50 + 60 * y.numpy())).max() < 8


def test_carlatta_source_and_folder_source(tmp_path):
    rel = make_carla(tmp_path / "carla")
    (tmp_path / "carla" / "clear_train.txt").write_text("\n".join(rel[:2]))
    loader = build_source_loader("carlatta", tmp_path / "carla", batch_size=2, image_size="native",
                                 num_workers=0)
    x, y = next(iter(loader))
    assert loader.task == "seg" and x.shape == (2, 3, 24, 40) and y.shape == (2, 24, 40)
    for c, name in enumerate(("cat", "dog")):
        save_rgb(tmp_path / "mine" / name / "a.png", (c, 0, 0), size=(8, 8))
    folder = build_source_loader("folder", tmp_path / "mine", batch_size=2, shuffle=False, num_workers=0)
    assert folder.class_names == ("cat", "dog") and next(iter(folder))[1].tolist() == [0, 1]


def test_stream_with_worker_processes(cifar10c, imagenetc):
    a = [b.labels.tolist() for b in build_stream("imagenet_c", imagenetc, batch_size=2, num_workers=2,
                                                  corruptions=["fog", "snow"])]
    b = [b.labels.tolist() for b in build_stream("imagenet_c", imagenetc, batch_size=2, num_workers=0,
                                                  corruptions=["fog", "snow"])]
    assert a == b and len(a) == 6


def test_dataset_images_are_decoded_only_with_the_listed_formats(tmp_path):
    """A data folder's file is never handed to another Pillow decoder (EPS would run Ghostscript)."""
    from PIL import Image

    from tta_perception.datasets._files import DatasetError, open_image

    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "b.png", format="GIF")
    (tmp_path / "c.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n")
    assert open_image(tmp_path / "a.png").getpixel((0, 0)) == (1, 2, 3)
    for bad in ("b.png", "c.jpg"):
        with pytest.raises(DatasetError, match="cannot decode image"):
            open_image(tmp_path / bad)
