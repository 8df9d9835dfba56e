"""The SavedModel serves what clients send (encoded images of any size, or uint8 pixels), decodes exactly as
training did, loads with TensorFlow alone, and reports bad images as errors without breaking later requests."""
import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image, TiffImagePlugin
from tensorflow.core.protobuf import saved_model_pb2

from tlkit.cli import cli
from tlkit.images import decode_image
from tlkit.errors import TlkitError
from tlkit.serving.export import export_run, parse_formats
from tlkit.serving.layout import next_version, read_manifest
from tlkit.serving.signatures import decode_tensor
from tlkit.storage import atomic_dir

FRESH_PROCESS = r"""
import json, sys
sys.modules["keras"] = sys.modules["tlkit"] = None  # importing either now fails: TensorFlow alone must do
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
out = model.signatures["serving_default"](images=tf.constant([open(p, "rb").read() for p in sys.argv[2:]]))
answer = {k: v.numpy().tolist() for k, v in out.items()}
answer["real_modules"] = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in ("keras", "tlkit") and v)
print(json.dumps(answer, default=bytes.decode))
"""


@pytest.fixture(scope="module")
def client_images(served, shared, tmp_path_factory):
    """Real photos as clients send them: JPEG (128 px flowers, 512 px samples), PNG, BMP and GIF."""
    tmp = tmp_path_factory.mktemp("client_images")
    samples = shared / "data" / "imagenet_samples"
    flowers = served.val_paths[:2] + served.val_paths[-2:]
    png_bird, png_flower, gif_flower = tmp / "bird.png", tmp / "flower.png", tmp / "flower.gif"
    Image.open(samples / "bird.bmp").save(png_bird)
    Image.open(flowers[0]).save(png_flower)
    Image.open(flowers[1]).save(gif_flower)
    return flowers + [samples / "owl.jpg", samples / "hot_dog.jpg", samples / "cat.bmp", png_bird, png_flower,
                      gif_flower]


def test_savedmodel_serves_image_bytes_in_a_process_without_keras_or_tlkit(served, client_images):
    sizes = {Image.open(p).size for p in client_images}
    assert len(sizes) >= 4 and {Image.open(p).format for p in client_images} == {"JPEG", "PNG", "BMP", "GIF"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(served.savedmodel), *map(str, client_images)],
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": "", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-2000:]
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["real_modules"] == []

    keras = served.keras_answers([decode_image(p, served.size) for p in client_images])
    expected = keras["probabilities"]
    probs = np.array(answer["probabilities"])
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert answer["class_names"] == keras["classes"]  # the unknown label below the threshold
    names = served.folder.class_names()
    assert answer["class_ids"] == [names.index(c) if c in names else -1 for c in keras["classes"]]
    assert [row[0] for row in answer["top_k_class_ids"]] == expected.argmax(1).tolist()  # always the raw ranking
    assert np.all(np.diff(answer["top_k_probabilities"], axis=1) <= 0)
    assert [[names[i] for i in row] for row in answer["top_k_class_ids"]] == answer["top_k_class_names"]


def test_saved_model_cli_lists_both_signatures(served):
    saved_model_cli = Path(sys.executable).parent / "saved_model_cli"
    shown = subprocess.run([str(saved_model_cli), "show", "--all", "--dir", str(served.savedmodel)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    default = shown.stdout.split("signature_def['serving_default']")[1].split("signature_def[")[0]
    pixels = shown.stdout.split("signature_def['serving_pixels']")[1].split("signature_def[")[0]
    assert "inputs['images']" in default and "DT_STRING" in default
    assert "inputs['pixels']" in pixels and "DT_UINT8" in pixels and "shape: (-1, -1, -1, 3)" in pixels
    for outputs in (default, pixels):
        for name in ("probabilities", "class_ids", "class_names", "top_k_class_ids", "top_k_class_names",
                     "top_k_probabilities"):
            assert f"outputs['{name}']" in outputs
    assert (served.savedmodel / "assets" / "labels.txt").read_text().split() == served.folder.class_names()


def _layers(layer):
    return [leaf for inner in getattr(layer, "layers", []) for leaf in [inner, *_layers(inner)]]


def test_the_savedmodel_holds_one_copy_of_the_model_and_one_decoder_branch(served):
    """Both signatures call one trace of the model (the export traces it once), and the decoder's only branch is
    JPEG or not; the signatures are also attributes of the loaded object."""
    saved = saved_model_pb2.SavedModel.FromString((served.savedmodel / "saved_model.pb").read_bytes())
    ops = Counter(node.op for function in saved.meta_graphs[0].graph_def.library.function
                  for node in function.node_def)
    convolutions = Counter(type(layer).__name__ for layer in _layers(served.model))
    assert ops["Conv2D"] == convolutions["Conv2D"] > 0
    assert ops["DepthwiseConv2dNative"] == convolutions["DepthwiseConv2D"] > 0
    assert ops["If"] + ops["StatelessIf"] == 1 and ops["Case"] + ops["StatelessCase"] == 0

    loaded = tf.saved_model.load(str(served.savedmodel))
    pixels = tf.constant(served.val_pixels[:2])
    np.testing.assert_array_equal(loaded.serving_pixels(pixels=pixels)["probabilities"],
                                  loaded.signatures["serving_pixels"](pixels=pixels)["probabilities"])


def test_bad_image_in_a_batch_is_an_error_and_the_next_request_succeeds(served):
    serve = tf.saved_model.load(str(served.savedmodel)).signatures["serving_default"]
    good = served.val_paths[0].read_bytes()
    first = serve(images=tf.constant([good]))["probabilities"].numpy()
    for bad, problem in [(good[: len(good) // 2], "Invalid JPEG data"), (b"%PDF-1.4 not an image", "Unknown image"),
                         (b"", "empty")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=problem):
            serve(images=tf.constant([good, bad]))
        again = serve(images=tf.constant([good]))["probabilities"].numpy()
        np.testing.assert_array_equal(again, first)  # no dropout or augmentation at serving time
    pixels = tf.saved_model.load(str(served.savedmodel)).signatures["serving_pixels"]
    np.testing.assert_allclose(pixels(pixels=tf.constant(served.val_pixels[:1]))["probabilities"], first, atol=1e-6)


def _jpeg_with_orientation(source: Image.Image, orientation: int, big_endian: bool = False) -> bytes:
    if big_endian:
        ifd = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"MM")
        ifd[0x0112] = orientation
        ifd.tagtype[0x0112] = 3  # SHORT
        exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08" + ifd.tobytes(8)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
    buffer = io.BytesIO()
    source.save(buffer, "JPEG", exif=exif, quality=92)
    return buffer.getvalue()


def test_serving_decoder_gives_training_pixels_for_every_orientation_and_format(shared, tmp_path):
    """Pillow (training) and the exported graph decode every file to the same pixels: EXIF orientation, grayscale,
    CMYK and progressive JPEG, alpha, palette and 16-bit PNG, animated GIF (first frame), WebP with alpha."""
    photo = Image.open(shared / "data" / "imagenet_samples" / "parrot.jpg").convert("RGB").resize((150, 96))
    files = {f"o{o}.jpg": _jpeg_with_orientation(photo, o) for o in range(1, 9)}
    files["o6_big_endian.jpg"] = _jpeg_with_orientation(photo, 6, big_endian=True)
    for name in ("owl.jpg", "hot_dog.jpg", "dragonfly.bmp"):
        files[name] = (shared / "data" / "imagenet_samples" / name).read_bytes()
    transparent = np.array(photo.convert("RGBA"))
    transparent[:40, :40, 3] = 0
    gray16 = Image.fromarray(np.array(photo.convert("L")).astype(np.uint16) * 257)
    for name, image, fmt, options in [
            ("photo.png", photo, "PNG", {}), ("photo.gif", photo, "GIF", {}), ("photo.bmp", photo, "BMP", {}),
            ("photo.webp", photo, "WEBP", {}), ("gray.jpg", photo.convert("L"), "JPEG", {}),
            ("cmyk.jpg", photo.convert("CMYK"), "JPEG", {}), ("progressive.jpg", photo, "JPEG", {"progressive": True}),
            ("transparent.png", Image.fromarray(transparent), "PNG", {}), ("la.png", photo.convert("LA"), "PNG", {}),
            ("palette.png", photo.convert("P"), "PNG", {}), ("gray16.png", gray16, "PNG", {}),
            ("animated.gif", photo, "GIF", {"save_all": True, "append_images": [photo.rotate(90)]}),
            ("rgba.webp", photo.convert("RGBA"), "WEBP", {}), ("gray.bmp", photo.convert("L"), "BMP", {})]:
        buffer = io.BytesIO()
        image.save(buffer, fmt, **options)
        files[name] = buffer.getvalue()
    upright = {}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        expected = decode_image(tmp_path / name, 64)
        np.testing.assert_array_equal(decode_tensor(tf.constant(data), 64).numpy(), expected, err_msg=name)
        upright[name] = expected
    assert len({upright[f"o{o}.jpg"].tobytes() for o in range(1, 9)}) == 8  # every orientation differs
    np.testing.assert_array_equal(upright["o6.jpg"], upright["o6_big_endian.jpg"])


def test_versions_are_never_overwritten_without_force(served, monkeypatch):
    root = served.folder.export_dir
    versions = {e["format"]: e["version"] for e in read_manifest(served.folder)}
    assert versions["savedmodel"] == 1 and versions["tflite"] == 2  # one number per export call, all formats
    assert next_version(root, "model") == 3

    result = CliRunner().invoke(cli, ["export", str(served.folder.path), "--format", "tflite", "--version", "2"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1] == (f"tlkit: error: {root / 'tflite' / 'model' / '2'} exists; "
                                     "choose another --version or pass --force to replace it")
    with pytest.raises(TlkitError, match="tflite/model/2 exists"):  # checked before anything is written
        export_run(served.folder, ("savedmodel", "tflite"), version=2, model=served.model)
    assert not (root / "model" / "2").exists()
    with pytest.raises(TlkitError, match="unknown export format pdf"):
        export_run(served.folder, parse_formats("savedmodel,pdf"), model=served.model)

    target = root / "model" / "7"
    with pytest.raises(RuntimeError, match="crash"):  # a crash mid-write leaves neither the version nor debris
        with atomic_dir(target) as tmp:
            (tmp / "saved_model.pb").write_bytes(b"half")
            raise RuntimeError("crash")
    assert not target.exists() and not list(target.parent.glob(".tmp-*"))


def test_export_cli_writes_next_version_and_reports_the_check(served):
    result = CliRunner().invoke(cli, ["export", str(served.folder.path), "--name", "flowers", "--check"])
    assert result.exit_code == 0, result.output
    target = served.folder.export_dir / "flowers" / "1"
    assert (target / "saved_model.pb").is_file() and (target / "assets" / "labels.txt").is_file()
    row = next(line for line in result.output.splitlines() if line.startswith("savedmodel")).split()
    assert row[1] == "export/flowers/1" and row[-2] == "1.0000" and float(row[-1]) < 1e-5
    check = next(e for e in read_manifest(served.folder) if e["path"] == "export/flowers/1")["check"]["savedmodel"]
    assert check["images"] == len(served.val_paths) and check["top1_agreement"] == 1.0
    assert check["max_probability_difference"] < 1e-5

    forced = CliRunner().invoke(cli, ["export", str(served.folder.path), "--name", "flowers", "--version", "1",
                                      "--force"])
    assert forced.exit_code == 0, forced.output
    assert [e["path"] for e in read_manifest(served.folder)].count("export/flowers/1") == 1
