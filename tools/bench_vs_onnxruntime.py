#!/usr/bin/env python3
"""nnquant's float engine vs onnxruntime on ARM's CIFAR-10 model, side by side, in one run.

    pip install onnxruntime onnx h5py numpy
    python3 tools/bench_vs_onnxruntime.py [--shared ../shared] [--threads 2] [--batch 64]

Steps: convert the Caffe model to ONNX (tools/caffe_to_onnx.py) and check onnxruntime's logits
against the reference (<= 1e-4); measure onnxruntime float32 (batch 64, intra_op_num_threads=2,
sequential execution, warm-up, several ~0.3 s reps: best and median); run
`cargo bench --bench float_forward` for nnquant's float engine on the same 64 images with the same
thread count (every SIMD path this CPU has, plus the general NCHW path); measure onnxruntime again;
repeat (--rounds, default 3: other processes on a shared machine move every figure within
seconds, so each nnquant run is compared with the better of the two onnxruntime runs around it);
print each round and the medians over the rounds of the figures and of the ratios. Then the
bit-exact q7 simulator (`cargo bench --bench sim`, every SIMD path this CPU has), also in rounds
between onnxruntime runs, with the median ratio per path (`--sim-only` skips the float engine).

Which ISA: nnquant's bench prints the kernel set of each path. onnxruntime's MLAS picks its SGEMM
kernels from CPUID at load time and does not report the choice; the script prints the CPU's
vector extensions and the kernel MLAS selects for them (AVX-512F > AVX2+FMA > AVX > SSE).
Exit code: 0, 1 when the ONNX check fails, 2 on errors.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import caffe_to_onnx  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def mlas_isa(flags):
    """The SGEMM kernel family MLAS's platform init chooses for these CPUID flags (x86-64)."""
    if "avx512f" in flags:
        return "AVX-512F (MlasGemmFloatKernelAvx512F)"
    if "avx2" in flags and "fma" in flags:
        return "AVX2+FMA3 (MlasGemmFloatKernelFma3)"
    if "avx" in flags:
        return "AVX (MlasGemmFloatKernelAvx)"
    return "SSE2 or non-x86 (unknown)"


def ort_bench(path, x, threads, reps, seconds):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(10):
        sess.run(None, feed)
    rates = []
    for _ in range(reps):
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            sess.run(None, feed)
            n += x.shape[0]
        rates.append(n / (time.perf_counter() - start))
    rates.sort()
    return rates[-1], rates[len(rates) // 2], sess.run(None, feed)[0]


def nnquant_bench(shared, threads):
    env = dict(os.environ, NNQUANT_SHARED=str(shared), FLOAT_BENCH_THREADS=str(threads))
    proc = subprocess.run(["cargo", "bench", "--bench", "float_forward"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise caffe_to_onnx.ConvertError(
            "cargo bench --bench float_forward failed:\n" + proc.stderr[-2000:])
    results, default, diffs = {}, None, {}
    for line in proc.stdout.splitlines():
        m = re.match(r"float_forward path (\S+) max \|logit - reference\| (\S+)", line)
        if m:
            diffs[m.group(1)] = float(m.group(2))
        m = re.match(r"float_forward path (\S+) threads (\d+) batch (\d+) best (\d+) median (\d+)", line)
        if m:
            results[m.group(1)] = (float(m.group(4)), float(m.group(5)))
        m = re.match(r"float_forward: fast path by default: (\S+)", line)
        if m:
            default = m.group(1)
        if "skipped" in line:
            raise caffe_to_onnx.ConvertError(line)
    if not results:
        raise caffe_to_onnx.ConvertError("float_forward printed no results:\n" + proc.stdout[-2000:])
    return default, results, diffs


def sim_bench(shared, threads, reps, seconds):
    """nnquant's bit-exact q7 simulator (`cargo bench --bench sim`): images/s per SIMD path,
    timed as onnxruntime is: the best of `reps` reps of at least `seconds` each."""
    env = dict(os.environ, NNQUANT_SHARED=str(shared), SIM_BENCH_THREADS=str(threads),
               SIM_BENCH_REPS=str(reps), SIM_BENCH_SECONDS=str(seconds))
    proc = subprocess.run(["cargo", "bench", "--bench", "sim"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise caffe_to_onnx.ConvertError("cargo bench --bench sim failed:\n" + proc.stderr[-2000:])
    out = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"sim path (\S+) .* ([0-9.]+) images/s", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    if not out:
        raise caffe_to_onnx.ConvertError("the sim bench printed no results:\n" + proc.stdout[-2000:])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default=os.environ.get("NNQUANT_SHARED", str(REPO.parent / "shared")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64, help="onnxruntime batch (nnquant's bench uses 64)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3,
                    help="nnquant runs, each between two onnxruntime runs (load on a shared machine "
                         "changes within seconds)")
    ap.add_argument("--sim-only", action="store_true",
                    help="skip the float engine; only the bit-exact simulator against onnxruntime")
    a = ap.parse_args()
    shared = Path(a.shared)
    model = shared / "models/arm-cifar10-m4"
    try:
        if not model.is_dir():
            raise caffe_to_onnx.ConvertError(f"{model} is missing (pass --shared or set NNQUANT_SHARED)")
        with open("/proc/loadavg") as f:
            print(f"machine load (1/5/15 min): {' '.join(f.read().split()[:3])}, {os.cpu_count()} CPUs")
        flags = cpu_flags()
        vec = sorted(f for f in flags if f in ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl"))
        print(f"CPU vector extensions: {' '.join(vec) or 'none found'}")

        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = os.path.join(tmp, "arm_cifar10.onnx")
            m = caffe_to_onnx.convert(str(model / "cifar10_m4_train_test.prototxt"),
                                      str(model / "cifar10_m4_iter_70000.caffemodel.h5"), [3, 32, 32])
            caffe_to_onnx.onnx.save(m, onnx_path)
            imgs = np.load(shared / "data/cifar10/test_1017_u8_hwc.npy")
            mean = caffe_to_onnx.read_blobproto(str(model / "mean.binaryproto"))
            x_all = caffe_to_onnx.nchw_minus_mean(imgs, mean)
            ref = np.load(model / "reference/float_logits_test1017.npy")

            import onnxruntime as ort

            sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
            got = sess.run(None, {sess.get_inputs()[0].name: x_all})[0]
            diff = float(np.abs(got - ref).max())
            print(f"onnxruntime {ort.__version__}: max |logit - reference| = {diff:.3g} on 1017 images")
            if not diff <= 1e-4:
                print("FAIL: the ONNX conversion does not match the reference", file=sys.stderr)
                return 1
            print(f"onnxruntime MLAS SGEMM kernels for this CPU: {mlas_isa(flags)}")

            x = np.ascontiguousarray(x_all[: a.batch])
            print(f"\nbatch {a.batch}, {a.threads} threads, {a.reps} reps of ~0.3 s after a warm-up; "
                  f"{a.rounds} rounds of onnxruntime, nnquant, ..., onnxruntime")
            ort_runs = [ort_bench(onnx_path, x, a.threads, a.reps, 0.3)[:2]]
            print(f"  onnxruntime                  best {ort_runs[-1][0]:8.0f}  median {ort_runs[-1][1]:8.0f}")
            rounds = []
            for _ in range(0 if a.sim_only else a.rounds):
                default, ours, diffs = nnquant_bench(shared, a.threads)
                for name, (best, med) in ours.items():
                    print(f"  nnquant {name:<20} best {best:8.0f}  median {med:8.0f}")
                ort_runs.append(ort_bench(onnx_path, x, a.threads, a.reps, 0.3)[:2])
                print(f"  onnxruntime                  best {ort_runs[-1][0]:8.0f}  median {ort_runs[-1][1]:8.0f}")
                # Against the better of the two onnxruntime runs around this one (conservative).
                ob = max(ort_runs[-2][0], ort_runs[-1][0])
                om = max(ort_runs[-2][1], ort_runs[-1][1])
                rounds.append((ours, ob, om))
            if rounds:
                float_summary(rounds, ort.__version__, diff, default, diffs)
            sim_rounds(onnx_path, x, a, shared, ort_runs[-1][0])
    except (caffe_to_onnx.ConvertError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def float_summary(rounds, version, diff, default, diffs):
    """The float rounds' medians: images/s and ratios per path."""
    print(f"\nper path: images/s and ratio to the better neighbouring onnxruntime run, "
          f"median over {len(rounds)} rounds (best-rep / median-rep figures)")
    print(f"{'onnxruntime ' + version:<30} best {np.median([r[1] for r in rounds]):8.0f}  "
          f"median {np.median([r[2] for r in rounds]):8.0f} images/s   max |logit - ref| {diff:.2e}")
    for name in rounds[0][0]:
        bests = [r[0][name][0] for r in rounds]
        meds = [r[0][name][1] for r in rounds]
        rb = np.median([r[0][name][0] / r[1] for r in rounds])
        rm = np.median([r[0][name][1] / r[2] for r in rounds])
        tag = " (default)" if name == default else ""
        print(f"nnquant {name + tag:<22} best {np.median(bests):8.0f}  median {np.median(meds):8.0f} "
              f"images/s   ratio: best {rb:5.2f}x  median {rm:5.2f}x   "
              f"max |logit - ref| {diffs.get(name, float('nan')):.2e}")


def sim_rounds(onnx_path, x, a, shared, ort_last):
    """The bit-exact q7 simulator (what the format search runs, every path this CPU has), in
    rounds like the float engine: each `cargo bench --bench sim` between two onnxruntime runs,
    against the better of them; the medians over the rounds."""
    print(f"\nbit-exact q7 simulator ({a.threads} threads, 1,017 images; {a.reps} reps of ~0.3 s, as "
          f"onnxruntime) vs onnxruntime float32, {a.rounds} rounds")
    ort_prev, rounds = ort_last, []
    for _ in range(a.rounds):
        sims = sim_bench(shared, a.threads, a.reps, 0.3)
        ort_next = ort_bench(onnx_path, x, a.threads, a.reps, 0.3)[0]
        ob = max(ort_prev, ort_next)
        print("  " + "  ".join(f"{n} {v:.0f}" for n, v in sims.items())
              + f"   onnxruntime {ort_next:.0f} (ratios against {ob:.0f})")
        rounds.append((sims, ob))
        ort_prev = ort_next
    print(f"onnxruntime float32: median of the better neighbouring runs "
          f"{np.median([r[1] for r in rounds]):.0f} images/s")
    for name in rounds[0][0]:
        ips = np.median([r[0][name] for r in rounds])
        ratios = [r[0][name] / r[1] for r in rounds]
        print(f"nnquant sim {name:<18} {ips:8.0f} images/s   ratio: median {np.median(ratios):5.2f}x "
              f"(rounds {', '.join(f'{v:.2f}' for v in ratios)})")


if __name__ == "__main__":
    sys.exit(main())
