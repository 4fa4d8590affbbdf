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

onnxruntime held to AVX2 (`--ort-avx2`, default `auto`: on when the CPU has AVX-512F): to compare
nnquant's AVX2 paths with what onnxruntime does on an AVX2 machine, the script copies the
installed onnxruntime package into a temporary directory and patches, in that copy only, the one
conditional jump that enters MLAS's AVX-512F kernel selection (located by its byte pattern: the
test of CPUID leaf 7 EBX bit 16, then the XCR0 0xE0 test), so MLAS keeps its AVX2/FMA3 kernels,
exactly as on a CPU without AVX-512F. Both onnxruntime builds run in every round, each in its own
process; the copy's logits must also match the reference (<= 1e-4) and must differ in the last
bits from the unpatched build's (evidence that other kernels ran). When the pattern is not found
exactly once (another onnxruntime version), the script says so and measures the unpatched build
only.
Exit code: 0, 1 when the ONNX check fails, 2 on errors.
"""
import argparse
import importlib.util
import json
import os
import re
import shutil
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


def ort_worker(path, x_path, ref_path, batch, threads, reps, seconds, out_path):
    """Runs in its own process (so that the patched copy and the installed onnxruntime never share
    one): the logits on every image, then best and median images/s on the first `batch`."""
    import onnxruntime as ort

    x_all = np.load(x_path)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x_all})[0]
    np.save(out_path, logits)
    feed = {name: np.ascontiguousarray(x_all[:batch])}
    for _ in range(10):
        sess.run(None, feed)
    rates = []
    for _ in range(reps):
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            sess.run(None, feed)
            n += batch
        rates.append(n / (time.perf_counter() - start))
    rates.sort()
    print(json.dumps({"best": rates[-1], "median": rates[len(rates) // 2], "version": ort.__version__,
                      "module": ort.__file__,
                      "max_diff": float(np.abs(logits - np.load(ref_path)).max())}))


class Ort:
    """One onnxruntime build (installed, or the copy held to AVX2), measured in a child process."""

    def __init__(self, label, pythonpath, onnx_path, x_path, ref_path, a, tmp):
        self.label, self.pythonpath = label, pythonpath
        self.onnx_path, self.x_path, self.ref_path, self.a = onnx_path, x_path, ref_path, a
        self.logits_path = os.path.join(tmp, f"logits_{label}.npy")

    def bench(self):
        env = dict(os.environ)
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--ort-worker", self.onnx_path,
               self.x_path, self.ref_path, str(self.a.batch), str(self.a.threads), str(self.a.reps),
               "0.3", self.logits_path]
        # Not from this script's directory: the copy must come first on the path.
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
        if proc.returncode != 0:
            raise caffe_to_onnx.ConvertError(f"onnxruntime ({self.label}) failed:\n" + proc.stderr[-2000:])
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        if self.pythonpath and not r["module"].startswith(self.pythonpath):
            raise caffe_to_onnx.ConvertError(f"the child loaded {r['module']}, not the copy")
        return r


# MLAS's platform init (onnxruntime/core/mlas/lib/platform.cpp): `if ((Cpuid7[1] & 0x10000) != 0 &&
# (xcr0 & 0xE0) == 0xE0)` selects the AVX-512F kernels. Compiled: test $0x10000,<reg32>; je <skip>;
# ...; test $0xe0,%al; je. Making the first `je` a `jmp` skips the AVX-512F block, as on a CPU
# without AVX-512F; everything chosen before it (AVX2/FMA3, AVX-VNNI checks) stays.
AVX512F_BRANCH = re.compile(rb"(?:\x41)?\xf7[\xc0-\xc7]\x00\x00\x01\x00(\x74).{0,12}?\xa8\xe0\x0f\x84", re.S)


def ort_held_to_avx2(tmp):
    """A copy of the installed onnxruntime package whose MLAS never selects AVX-512F kernels.
    Returns the directory to put on PYTHONPATH, or None with the reason."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return None, "onnxruntime is not installed"
    src = Path(list(spec.submodule_search_locations)[0])
    root = Path(tmp) / "ort_avx2"
    shutil.copytree(src, root / "onnxruntime", symlinks=True)
    modules = sorted((root / "onnxruntime/capi").glob("onnxruntime_pybind11_state*.so"))
    if len(modules) != 1:
        return None, f"expected one onnxruntime_pybind11_state module, found {len(modules)}"
    data = bytearray(modules[0].read_bytes())
    hits = list(AVX512F_BRANCH.finditer(data))
    if len(hits) != 1:
        return None, (f"MLAS's AVX-512F branch pattern found {len(hits)} times in {modules[0].name} "
                      "(expected once; another onnxruntime version)")
    data[hits[0].start(1)] = 0xEB  # je rel8 -> jmp rel8
    modules[0].write_bytes(bytes(data))
    return str(root), f"patched the jump at file offset {hits[0].start(1):#x}"


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
    if len(sys.argv) > 1 and sys.argv[1] == "--ort-worker":
        path, x_path, ref_path, batch, threads, reps, seconds, out = sys.argv[2:10]
        ort_worker(path, x_path, ref_path, int(batch), int(threads), int(reps), float(seconds), out)
        return 0
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
    ap.add_argument("--ort-avx2", choices=["auto", "on", "off"], default="auto",
                    help="also measure onnxruntime held to its AVX2/FMA3 kernels (a patched private "
                         "copy; auto: when the CPU has AVX-512F)")
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
            x_path = os.path.join(tmp, "x.npy")
            np.save(x_path, caffe_to_onnx.nchw_minus_mean(imgs, mean))
            ref_path = str(model / "reference/float_logits_test1017.npy")

            orts = [Ort(f"MLAS {mlas_isa(flags).split(' (')[0]}", None, onnx_path, x_path, ref_path, a, tmp)]
            if a.ort_avx2 == "on" or (a.ort_avx2 == "auto" and "avx512f" in flags):
                root, how = ort_held_to_avx2(tmp)
                if root is None:
                    print(f"onnxruntime held to AVX2: unavailable ({how}); measuring the installed build only")
                else:
                    print(f"onnxruntime held to AVX2: a private copy, {how}")
                    orts.append(Ort("MLAS AVX2+FMA3, held", root, onnx_path, x_path, ref_path, a, tmp))

            print(f"\nbatch {a.batch}, {a.threads} threads, {a.reps} reps of ~0.3 s after a warm-up; "
                  f"{a.rounds} rounds of onnxruntime, nnquant, ..., onnxruntime; each onnxruntime build "
                  f"in its own process")
            runs = [run_orts(orts)]
            if any(r["max_diff"] > 1e-4 for r in runs[0].values()):
                print("FAIL: onnxruntime's logits do not match the reference", file=sys.stderr)
                return 1
            if len(orts) == 2:
                d = float(np.abs(np.load(orts[0].logits_path) - np.load(orts[1].logits_path)).max())
                print(f"  the AVX2-held build's logits differ from the installed build's by up to {d:.2e} "
                      f"({'other kernels ran' if d > 0 else 'IDENTICAL: the patch may not have taken effect'})")
            version = runs[0][orts[0].label]["version"]
            rounds = []
            for _ in range(0 if a.sim_only else a.rounds):
                default, ours, diffs = nnquant_bench(shared, a.threads)
                for name, (best, med) in ours.items():
                    print(f"  nnquant {name:<28} best {best:8.0f}  median {med:8.0f}")
                runs.append(run_orts(orts))
                # Against the better of the two onnxruntime runs around this one (conservative).
                rounds.append((ours, neighbours(runs, "best"), neighbours(runs, "median")))
            if rounds:
                float_summary(rounds, version, default, diffs)
            sim_rounds(orts, runs, a, shared)
    except (caffe_to_onnx.ConvertError, OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def run_orts(orts):
    """Every onnxruntime build once, printed; {label: result}."""
    out = {}
    for o in orts:
        r = o.bench()
        out[o.label] = r
        print(f"  onnxruntime {r['version']} {o.label:<22} best {r['best']:8.0f}  median {r['median']:8.0f}"
              f"   max |logit - ref| {r['max_diff']:.2e}")
    return out


def neighbours(runs, key):
    """Per onnxruntime build: the better of the last two runs' figure."""
    return {label: max(runs[-2][label][key], runs[-1][label][key]) for label in runs[-1]}


def float_summary(rounds, version, default, diffs):
    """The float rounds' medians: images/s and ratios per path, against each onnxruntime build."""
    print(f"\nper path: images/s and ratio to the better neighbouring onnxruntime run, "
          f"median over {len(rounds)} rounds (best-rep / median-rep figures)")
    labels = list(rounds[0][1])
    for label in labels:
        print(f"{'onnxruntime ' + version + ' ' + label:<44} best {np.median([r[1][label] for r in rounds]):8.0f}  "
              f"median {np.median([r[2][label] for r in rounds]):8.0f} images/s")
    for name in rounds[0][0]:
        bests = [r[0][name][0] for r in rounds]
        meds = [r[0][name][1] for r in rounds]
        tag = " (default)" if name == default else ""
        ratios = "   ".join(
            f"vs {label}: best {np.median([r[0][name][0] / r[1][label] for r in rounds]):5.2f}x "
            f"median {np.median([r[0][name][1] / r[2][label] for r in rounds]):5.2f}x" for label in labels)
        print(f"nnquant {name + tag:<36} best {np.median(bests):8.0f}  median {np.median(meds):8.0f} "
              f"images/s   {ratios}   max |logit - ref| {diffs.get(name, float('nan')):.2e}")


def sim_rounds(orts, runs, a, shared):
    """The bit-exact q7 simulator (what the format search runs, every path this CPU has), in
    rounds like the float engine: each `cargo bench --bench sim` between two onnxruntime runs,
    against the better of them; the medians over the rounds."""
    print(f"\nbit-exact q7 simulator ({a.threads} threads, 1,017 images; {a.reps} reps of ~0.3 s, as "
          f"onnxruntime) vs onnxruntime float32, {a.rounds} rounds")
    rounds = []
    for _ in range(a.rounds):
        sims = sim_bench(shared, a.threads, a.reps, 0.3)
        print("  nnquant sim " + "  ".join(f"{n} {v:.0f}" for n, v in sims.items()))
        runs.append(run_orts(orts))
        rounds.append((sims, neighbours(runs, "best")))
    for o in orts:
        print(f"\nagainst onnxruntime {o.label}: median of the better neighbouring runs "
              f"{np.median([r[1][o.label] for r in rounds]):.0f} images/s")
        for name in rounds[0][0]:
            ips = np.median([r[0][name] for r in rounds])
            ratios = [r[0][name] / r[1][o.label] for r in rounds]
            print(f"  nnquant sim {name:<18} {ips:8.0f} images/s   ratio: median {np.median(ratios):5.2f}x "
                  f"(rounds {', '.join(f'{v:.2f}' for v in ratios)})")


if __name__ == "__main__":
    sys.exit(main())
