"""Batch-1 latency of a run's exports, measured side by side on this machine.

    python benchmarks/serving_latency.py RUN_DIR [--runs 200]

Uses the newest SavedModel, TFLite and (if exported) ONNX export of the run (create them with
`tlkit export RUN_DIR --format all`). Every artefact classifies the same validation photo, already decoded and
resized (uint8 pixels), through tlkit.predict; the SavedModel is also timed on the JPEG bytes (decode included).
Prints median and 90th-percentile milliseconds, file sizes, and the speed relative to the SavedModel.
"""
import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tlkit.serving.layout import read_manifest  # noqa: E402
from tlkit.serving.predictors import load_predictor  # noqa: E402
from tlkit.runfolder import RunFolder  # noqa: E402


def timings(call, runs: int, warmup: int = 10) -> np.ndarray:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return np.array(seconds) * 1000


def newest(entries, fmt):
    found = [e for e in entries if e["format"] == fmt]
    return max(found, key=lambda e: (e["created"], e["version"])) if found else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--runs", type=int, default=200, help="timed calls per artefact (median reported)")
    args = parser.parse_args()

    folder = RunFolder.open(args.run_dir)
    entries = read_manifest(folder)
    savedmodel, tflite, onnx = (newest(entries, f) for f in ("savedmodel", "tflite", "onnx"))
    if not savedmodel or not tflite:
        raise SystemExit(f"needs a SavedModel and a TFLite export: tlkit export {args.run_dir} --format all")
    files = {"SavedModel": savedmodel["files"]["savedmodel"], "TFLite float32": tflite["files"]["float32"],
             "TFLite int8": tflite["files"]["int8"]}
    if onnx:
        files["ONNX"] = onnx["files"]["onnx"]
    pixels = None
    rows = []
    for label, entry in files.items():
        predictor = load_predictor(folder.path / entry["path"])
        if pixels is None:
            pixels = folder.split_pixels("val", predictor.size, "latency", 1)
        rows.append((label, entry["bytes"], timings(lambda: predictor.probabilities(pixels), args.runs)))
        if label == "SavedModel":
            serve = predictor.loaded.signatures["serving_default"]
            path = next(r["path"] for r in folder.read_csv(folder.split_file) if r["split"] == "val")
            jpeg = tf.constant([open(path, "rb").read()])
            rows.append(("SavedModel, JPEG bytes", entry["bytes"], timings(lambda: serve(images=jpeg), args.runs)))

    base = np.median(rows[0][2])
    print(f"batch 1, {pixels.shape[1]} px, {args.runs} runs each, {os.cpu_count()} CPU threads; {folder.path}")
    print(f"{'artefact':<24} {'size':>9} {'median ms':>10} {'p90 ms':>8} {'vs SavedModel':>14}")
    for label, size, ms in rows:
        print(f"{label:<24} {size / 2**20:>6.2f} MB {np.median(ms):>10.2f} {np.percentile(ms, 90):>8.2f} "
              f"{base / np.median(ms):>13.2f}x")


if __name__ == "__main__":
    main()
