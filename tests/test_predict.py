"""predict + imageio: PNG/JPEG of mixed sizes, bit depths and modes, DICOM, every bad-file case,
the three output formats, and the same numbers from an export, its run folder and its .keras."""
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from PIL import Image  # noqa: E402

from chest_tf import imageio  # noqa: E402
from chest_tf.console import run_cli  # noqa: E402
from chest_tf.data.info import get_info  # noqa: E402

LABELS = list(get_info("chestmnist").labels)
THRESHOLDS = [0.5] * 14
THRESHOLDS[0], THRESHOLDS[1], THRESHOLDS[2] = 0.0, 1.01, None  # always / never / undefined


# ----------------------------------------------------------------------------------------------
# Fixtures: a run folder and its export (tiny untrained ViT), images written with Pillow
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from chest_tf.models.registry import build_model

    run = tmp_path_factory.mktemp("predict") / "run"
    (run / "eval").mkdir(parents=True)
    build_model("vit_tiny", (28, 28, 1), 14, dim=32, depth=2, heads=2).save(run / "best.keras")
    (run / "config.json").write_text(json.dumps(
        {"config": {"data": {"dataset": "chestmnist", "size": 28}, "model": {"arch": "vit_tiny"}}}))
    (run / "eval" / "metrics.json").write_text(json.dumps(
        {"thresholds": {"method": "youden", "chosen_on": "val", "values": THRESHOLDS},
         "headline": {"split": "test", "auc": 0.6}}))
    return run


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    from chest_tf.serving.release import ReleaseOptions
    from chest_tf.serving.savedmodel import export_run

    return export_run(run_dir, run_dir.parent / "export", verify=False, options=ReleaseOptions.plain())


@pytest.fixture(scope="module")
def predictor(exported):
    from chest_tf.serving.predictor import load_predictor

    return load_predictor(exported)


def _rng(seed=0):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def good_images(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the uint8 array the reader must return), written with Pillow."""
    folder = tmp_path_factory.mktemp("good")
    rng = _rng(1)
    out = {}

    def save(name, array, mode=None, **kw):
        path = folder / name
        Image.fromarray(array, mode=mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
        return path

    g8 = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    out["gray8"] = (save("a_gray8.png", g8), g8[..., None])
    g8b = rng.integers(0, 256, (61, 45), dtype=np.uint8)
    out["gray8_big"] = (save("b_gray8_61x45.png", g8b), g8b[..., None])
    g16 = rng.integers(100, 4000, (40, 36), dtype=np.uint16)  # 12 significant bits in a 16-bit PNG
    g16[0, 0], g16[0, 1] = 100, 3999
    expected16 = np.rint((g16.astype(np.float64) - 100) * 255.0 / 3899).astype(np.uint8)[..., None]
    out["gray16"] = (save("c_gray16.png", g16), expected16)
    rgb = rng.integers(0, 256, (30, 33, 3), dtype=np.uint8)
    out["rgb"] = (save("d_rgb.png", rgb), rgb)
    rgba = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
    composite = ((rgba[..., :3].astype(np.uint32) * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    out["rgba"] = (save("e_rgba.png", rgba), composite)
    la = rng.integers(0, 256, (20, 24, 2), dtype=np.uint8)
    out["la"] = (save("f_la.png", la, mode="LA"), ((la[..., :1].astype(np.uint32) * la[..., 1:] + 127) // 255).astype(np.uint8))
    smooth = np.kron(rng.integers(0, 256, (5, 5)), np.ones((8, 8))).astype(np.uint8)  # 40x40, JPEG-friendly
    path = save("g_gray.jpg", smooth, quality=95)
    out["jpeg_gray"] = (path, np.asarray(Image.open(path))[..., None])
    smooth_rgb = np.stack([smooth, smooth[::-1], smooth.T], -1)
    path = save("h_rgb.JPEG", smooth_rgb, quality=95)
    out["jpeg_rgb"] = (path, np.asarray(Image.open(path)))
    assert out["jpeg_gray"][1].shape == (40, 40, 1) and out["jpeg_rgb"][1].shape == (40, 40, 3)
    return out


def png_with_header(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR claims ``width x height`` (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, good_images) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    png = good_images["gray8_big"][0].read_bytes()
    jpg = good_images["jpeg_rgb"][0].read_bytes()
    files = {
        "empty": folder / "empty.png",
        "not_image": folder / "notes.png",
        "truncated_png": folder / "truncated.png",
        "truncated_jpeg": folder / "truncated.jpg",
        "bomb": png_with_header(folder / "bomb.png", 9_000, 9_000),  # over our 64 Mi pixel default
        "huge_bomb": png_with_header(folder / "huge_bomb.png", 100_000, 100_000),  # over Pillow's own guard
        "missing": folder / "missing.png",
    }
    files["empty"].write_bytes(b"")
    files["not_image"].write_text("this is not an image\n")
    files["truncated_png"].write_bytes(png[: len(png) // 2])
    files["truncated_jpeg"].write_bytes(jpg[: len(jpg) // 2])
    return files


# ----------------------------------------------------------------------------------------------
# imageio
# ----------------------------------------------------------------------------------------------
def test_read_image_modes_and_bit_depths(good_images):
    for name, (path, expected) in good_images.items():
        got = imageio.read_image(path)
        assert got.dtype == np.uint8 and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)
    assert imageio.scale_to_uint8(np.full((3, 3), 7, np.uint16)).max() == 0  # constant image


def test_read_image_bad_files(bad_images):
    expected = {"empty": "empty file", "not_image": "not a PNG, JPEG or DICOM image",
                "truncated_png": "truncated or corrupt", "truncated_jpeg": "truncated or corrupt",
                "bomb": "9000 x 9000 = 81,000,000 pixels exceeds the limit of 67,108,864",
                "huge_bomb": "exceeds the limit", "missing": "no such file"}
    for name, path in bad_images.items():
        with pytest.raises(imageio.ImageReadError) as info:
            imageio.read_image(path)
        message = str(info.value)
        assert message.startswith(str(path)) and expected[name] in message and "\n" not in message, name


def test_pixel_limit_and_other_formats(good_images, tmp_path):
    with pytest.raises(imageio.ImageReadError, match="61 = 2,745 pixels exceeds the limit of 1,000"):
        imageio.read_image(good_images["gray8_big"][0], max_pixels=1000)
    Image.new("L", (8, 8)).save(tmp_path / "x.tif")
    with pytest.raises(imageio.ImageReadError, match="unsupported image format TIFF"):
        imageio.read_image(tmp_path / "x.tif")


def test_find_images_walks_sorted_with_extensions(tmp_path):
    for rel in ("b/2.png", "b/1.JPG", "a.jpeg", "c.txt", ".hidden.png", ".cache/x.png", "d/scan.dcm"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in imageio.find_images([tmp_path, tmp_path / "c.txt"])]
    assert found == ["a.jpeg", "b/1.JPG", "b/2.png", "d/scan.dcm", "c.txt"]


def test_dicom_windowing_rescale_and_monochrome1():
    pixels = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    ds = SimpleNamespace(PhotometricInterpretation="MONOCHROME2", RescaleSlope="2", RescaleIntercept="-1024",
                         WindowCenter=["976", "40"], WindowWidth=["2001", "400"])
    values = pixels * 2.0 - 1024  # -1024, 976, 2976, 6976
    low, high = 976 - 0.5 - 1000, 976 - 0.5 + 1000
    want = np.where(values <= low, 0, np.where(values > high, 255, np.rint(((values - 975.5) / 2000 + 0.5) * 255)))
    got = imageio.dicom_to_uint8(ds, pixels)
    assert got.shape == (2, 2, 1) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[..., 0], want.astype(np.uint8))
    assert got[0, 1, 0] == 128  # the window centre maps to mid-grey
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(imageio.dicom_to_uint8(ds, pixels)[..., 0], 255 - want.astype(np.uint8))
    plain = SimpleNamespace(PhotometricInterpretation="MONOCHROME2")  # no window: own min..max
    np.testing.assert_array_equal(imageio.dicom_to_uint8(plain, pixels)[..., 0],
                                  np.rint(pixels / 4000 * 255).astype(np.uint8))
    assert imageio.voi_window(np.array([40.0]), 40, 400, "SIGMOID")[0] == 128


def test_dicom_file_roundtrip(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = 32, 30
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1000
    ds.WindowCenter, ds.WindowWidth = 500, 1001
    pixels = _rng(3).integers(0, 4096, (32, 30), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    path = tmp_path / "chest.dcm"
    ds.save_as(path, enforce_file_format=True)
    want = 255 - imageio.voi_window(pixels.astype(np.float64) - 1000, 500, 1001)
    np.testing.assert_array_equal(imageio.read_image(path)[..., 0], want)
    no_ext = tmp_path / "chest_no_extension"
    no_ext.write_bytes(path.read_bytes())  # recognised by the DICM preamble
    np.testing.assert_array_equal(imageio.read_image(no_ext)[..., 0], want)


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "scan.dcm"
    path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # import pydicom -> ImportError
    with pytest.raises(imageio.ImageReadError, match=r"scan.dcm: reading DICOM needs pydicom; .*chest_tf\[dicom\]"):
        imageio.read_image(path)


# ----------------------------------------------------------------------------------------------
# predict
# ----------------------------------------------------------------------------------------------
def _reference_probs(run_dir, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each image alone through the Keras model with the serving computation."""
    import tensorflow as tf

    from chest_tf.runs import load_keras_model
    from chest_tf.serving.signature import serving_tf_function

    model = load_keras_model(run_dir / "best.keras")
    fn = serving_tf_function(model, "multi-label, binary-class")
    return {k: fn(tf.constant(a[None]))["probs"].numpy()[0] for k, a in arrays.items()}


def test_predict_mixed_files_json(predictor, run_dir, good_images, bad_images):
    from chest_tf.serving.outputs import run_predictions

    inputs = [p for p, _ in good_images.values()] + list(bad_images.values())
    out, err = io.StringIO(), io.StringIO()
    status = run_predictions(predictor, inputs, fmt="json", batch_size=3, out=out, err=err)
    assert status == 1  # some files failed
    doc = json.loads(out.getvalue())
    assert [r["file"] for r in doc["results"]] == [str(p) for p, _ in good_images.values()]
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error: ")]
    assert len(errors) == len(bad_images) == len(doc["errors"])
    for path in bad_images.values():
        assert sum(f"error: {path}:" in line for line in errors) == 1
    assert "predicted 8 image(s), 7 failed" in err.getvalue()

    reference = _reference_probs(run_dir, {k: a for k, (_, a) in good_images.items()})
    for (name, _), result in zip(good_images.items(), doc["results"]):
        probs = np.array([result["probs"][n] for n in LABELS])
        assert np.max(np.abs(probs - reference[name])) <= 1e-5, name
        assert result["positive"][0] == "atelectasis"  # threshold 0: always positive
        assert "cardiomegaly" not in result["positive"] and "effusion" not in result["positive"]
        assert result["positive"] == [n for n, p, t in zip(LABELS, probs, THRESHOLDS) if t is not None and p >= t]
    assert doc["thresholds"]["values"] == THRESHOLDS and doc["model"]["kind"] == "savedmodel"
    assert (doc["results"][1]["width"], doc["results"][1]["height"], doc["results"][3]["channels"]) == (45, 61, 3)


def test_predict_cli_table_csv_and_exit_codes(exported, good_images, bad_images, capsys):
    from chest_tf.cli.predict import main

    folder = good_images["gray8"][0].parent
    assert run_cli(main, [str(exported), str(folder), "--top-k", "2"]) == 0
    captured = capsys.readouterr()
    blocks = captured.out.split("\n\n")
    assert len(blocks) == 1 + len(good_images) and "thresholds chosen on val" in blocks[0]
    first = blocks[1].splitlines()
    assert first[0].startswith(f"{good_images['gray8'][0]}  (28 x 28 gray)  positive: atelectasis")
    assert len(first) == 2 + 2  # header line, column titles, top 2
    assert captured.err.strip() == f"predicted {len(good_images)} image(s)"

    assert run_cli(main, [str(exported), str(folder), str(bad_images["truncated_png"]), "--format", "csv"]) == 1
    captured = capsys.readouterr()
    rows = captured.out.splitlines()
    assert rows[0] == ",".join(["file", "width", "height", "channels", *LABELS, "positive", "ood_score",
                                "in_distribution", "checks"])
    assert len(rows) == 1 + len(good_images)
    assert captured.err.splitlines()[0].startswith(f"error: {bad_images['truncated_png']}: truncated")

    assert run_cli(main, [str(exported), str(bad_images["empty"].parent / "no_such_dir")]) == 1
    assert run_cli(main, [str(exported / "nope"), str(folder)]) == 2
    assert "error: model not found" in capsys.readouterr().err
    empty = bad_images["empty"].parent / "empty_dir"
    empty.mkdir(exist_ok=True)
    assert run_cli(main, [str(exported), str(empty)]) == 2
    assert "no images found" in capsys.readouterr().err


def test_run_dir_and_keras_file_give_the_export_numbers(predictor, run_dir, exported, good_images):
    from chest_tf.serving.predictor import load_predictor

    batch = np.stack([good_images["gray8"][1], good_images["rgba"][1][..., :1]])
    want = predictor.serve(batch)["probs"]
    for path in (run_dir, exported / "model.keras"):
        other = load_predictor(path)
        assert other.metadata["thresholds"]["values"] == THRESHOLDS
        assert np.max(np.abs(other.serve(batch)["probs"] - want)) <= 1e-5
    from chest_tf.errors import ConfigError

    lone = run_dir.parent / "lone" / "m.keras"
    lone.parent.mkdir(exist_ok=True)
    lone.write_bytes((run_dir / "best.keras").read_bytes())
    with pytest.raises(ConfigError, match="--dataset"):
        load_predictor(lone)
    meta = load_predictor(lone, dataset="chestmnist").metadata
    assert meta["output_names"] == LABELS and meta["thresholds"]["values"] == [0.5] * 14


def test_interpret_binary_and_multiclass():
    from chest_tf.serving.predictor import interpret

    binary = {"output_names": ["pneumonia"], "class_names": ["normal", "pneumonia"], "task": "binary-class",
              "thresholds": {"values": [0.6]}}
    assert interpret(np.array([0.7]), binary)["call"] == "pneumonia"
    assert interpret(np.array([0.5]), binary)["call"] == "normal"
    multi = {"output_names": ["a", "b", "c"], "class_names": ["a", "b", "c"], "task": "multi-class",
             "thresholds": {"values": [0.9, 0.9, 0.9]}}
    assert interpret(np.array([0.2, 0.5, 0.3]), multi)["predicted"] == "b"
