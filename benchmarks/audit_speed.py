#!/usr/bin/env python3
"""What `tlkit data audit` costs against one plain forward pass of its base over the same images.

    python benchmarks/audit_speed.py [DATA] [--rounds 2]

Runs, alternately: the plain Keras forward pass of vs_keras_guide.py (MobileNetV2 0.35 at the audit's
96 px, images decoded by tf.data; model built and traced outside the timing), `tlkit data audit` with a
cold cache (everything timed: weights, decoding, building the model, features, the analysis, the files),
and the same audit again on the warm cache (features reused). Prints each round and the ratios; the
issue's line is audit / forward <= 1.5.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_keras_guide import FORWARD_PASS, SHARED, last_json  # noqa: E402

SIZE = 96  # the quickstart recipe's, which the audit uses by default


def run_forward(data: str, weights_dir: Path) -> float:
    weights = weights_dir / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    out = subprocess.run([sys.executable, "-c", FORWARD_PASS, data, str(SIZE), str(weights)],
                         capture_output=True, text=True, check=True)
    return last_json(out.stdout)["forward_s"]


def run_audit(data: str, weights_dir: Path, cache: Path, out: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tlkit.cli", "data", "audit", data, "--weights-dir", str(weights_dir),
                    "--cache-dir", str(cache), "--out", str(out)], capture_output=True, text=True, check=True,
                   env={**os.environ, "TLKIT_PROGRESS": "0"})
    report = json.loads((out / "audit.json").read_text())
    return {**report["timings"], "process": round(time.perf_counter() - started, 2), "counts": report["counts"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(SHARED / "data" / "flowers5"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--weights-dir", type=Path, default=SHARED / "weights")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlkit-audit-bench-") as tmp:
        for round_ in range(args.rounds):
            cache = Path(tmp) / f"cache-{round_}"  # cold: no decoded images or features from an earlier round
            forward = run_forward(args.data, args.weights_dir)
            cold = run_audit(args.data, args.weights_dir, cache, Path(tmp) / f"cold-{round_}")
            warm = run_audit(args.data, args.weights_dir, cache, Path(tmp) / f"warm-{round_}")
            rows.append((forward, cold, warm))
            print(f"round {round_ + 1}: forward pass {forward:.1f}s; audit cold {json.dumps(cold)}; "
                  f"warm total {warm['total']:.1f}s", flush=True)
    forward = sum(r[0] for r in rows) / len(rows)
    cold = sum(r[1]["total"] for r in rows) / len(rows)
    warm = sum(r[2]["total"] for r in rows) / len(rows)
    parts = {key: sum(r[1][key] for r in rows) / len(rows)
             for key in ("weights", "data", "model", "features", "duplicates", "labels", "outliers", "write")}
    print(f"\n{args.data}: MobileNetV2 0.35, {SIZE} px, {args.rounds} round(s), mean wall seconds")
    print(f"one plain forward pass: {forward:.1f}s")
    print(f"audit, cold cache: {cold:.1f}s = {cold / forward:.2f}x the forward pass (target <= 1.5); "
          + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()))
    print(f"audit, features reused: {warm:.1f}s = {warm / forward:.2f}x the forward pass")
    print(f"found: {json.dumps(rows[-1][1]['counts'])}")


if __name__ == "__main__":
    main()
