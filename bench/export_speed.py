"""ONNX export and onnxruntime speed on this CPU, per backbone, against PyTorch fp32 and bf16 in the same run.

For each backbone at 512x512, batch 1 (random weights: latency does not depend on their values):
  - export time (``export_onnx``: dynamo export, metadata, full checker) and file size;
  - latency of PyTorch fp32, PyTorch bf16 autocast and onnxruntime (CPU) at each graph optimisation level
    (disable, basic, extended, all = onnxruntime's default), plus an int8 (dynamic quantisation of MatMul /
    Gemm / Conv weights) and an fp16 variant of the graph, all timed in alternating rounds so load changes on
    a shared machine hit every runtime alike; ratios are medians of per-round ratios to PyTorch fp32
    (goal: onnxruntime <= 0.8x for the convolutional backbones);
  - parity: max |onnxruntime - PyTorch fp32| of p_malignant, boxes and scores on synthetic images.
PyTorch runs with freed memory kept in the process (as bench/model_speed.py and the trainer do) and onnxruntime's
pool threads do not spin between runs (spinning threads slow the PyTorch run that follows them).
Each backbone runs in its own subprocess, with the same number of threads for PyTorch and onnxruntime.

    python bench/export_speed.py                                  # all backbones, 2 threads, 7 rounds
    python bench/export_speed.py --backbones resnet50 --iters 3 --no-variants

Prints a table and writes bench/results/export_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKBONES = ["resnet50", "convnextv2_tiny", "mambavision_t", "dinov3_vitb16"]
LEVELS = ["disable", "basic", "extended", "all"]


def _session(path: Path, threads: int, level: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ORT's pool threads spin after a run by default: in alternating rounds they took the cores from the PyTorch
    # run that followed (its latency 3-10x what bench/model_speed.py measures), so they sleep here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _variants(path: Path, workdir: Path) -> dict[str, Path | str]:
    """int8 (dynamic quantisation) and fp16 copies of the graph; a variant that fails gives its error."""
    import onnx

    out: dict[str, Path | str] = {}
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        out["int8"] = workdir / "int8.onnx"
        quantize_dynamic(str(path), str(out["int8"]), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm", "Conv"])
    except Exception as e:  # noqa: BLE001 - a variant that cannot be made is reported, the bench goes on
        out["int8"] = f"{type(e).__name__}: {str(e)[:200]}"
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(path)), keep_io_types=True)
        out["fp16"] = workdir / "fp16.onnx"
        onnx.save(model, str(out["fp16"]))
    except Exception as e:  # noqa: BLE001
        out["fp16"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def _rounds(fns: dict, iters: int, warmup: int) -> dict[str, list[float]]:
    """Run every function once per round, in turn; per-function lists of seconds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def _max_errors(outputs, reference) -> dict[str, float]:
    import numpy as np

    names = ("p_malignant", "boxes_cxcywh", "scores")
    return {n: float(np.abs(np.asarray(o, np.float64) - np.asarray(r, np.float64)).max())
            for n, o, r in zip(names, outputs, reference)}


def measure_one(backbone: str, size: int, iters: int, warmup: int, threads: int, variants: bool) -> dict:
    import torch

    from mammodetr.training.host_memory import keep_freed_memory

    torch.set_num_threads(threads)
    with keep_freed_memory():  # as bench/model_speed.py: glibc would unmap and re-fault PyTorch's activations
        return _measure(backbone, size, iters, warmup, threads, variants)


def _measure(backbone: str, size: int, iters: int, warmup: int, threads: int, variants: bool) -> dict:
    import torch

    from mammodetr.config import RunConfig
    from mammodetr.inference.onnx_export import ExportGraph, ExportOptions, export_onnx, synthetic_images
    from mammodetr.models.config import ModelConfig
    from mammodetr.models.detr import build_model

    torch.manual_seed(0)
    config = RunConfig(model=ModelConfig(backbone=backbone, pretrained="none", dropout=0.0))
    config.data.image_size = size
    model = build_model(config.model).eval()
    graph = ExportGraph(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = export_onnx(model, config, work / "model.onnx", options=ExportOptions(check=False))
        files = {f"ort_{level}": (result.path, level) for level in LEVELS}
        made = _variants(result.path, work) if variants else {}
        files.update({f"ort_{k}": (v, "all") for k, v in made.items() if isinstance(v, Path)})
        sessions = {k: _session(p, threads, level) for k, (p, level) in files.items()}
        x = synthetic_images(1, size, seed=1)
        xn = x.numpy()
        with torch.inference_mode():
            reference = [t.numpy() for t in graph(x)]
        parity = {k: _max_errors(s.run(None, {"images": xn}), reference) for k, s in sessions.items()}

        def torch_run(bf16: bool):
            def run():
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    graph(x)
            return run

        fns = {"torch_fp32": torch_run(False), "torch_bf16": torch_run(True)}
        fns.update({k: (lambda s=s: s.run(None, {"images": xn})) for k, s in sessions.items()})
        times = _rounds(fns, iters, warmup)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = {k: statistics.median(t / f for t, f in zip(v, times["torch_fp32"])) for k, v in times.items()}
    return {"backbone": backbone, "size": size, "batch": 1, "threads": threads, "iters": iters,
            "export_s": result.seconds, "file_mb": result.size_bytes / 1e6, "latency_s": median,
            "ratio_to_torch_fp32": ratio, "parity_max_abs": parity,
            "variant_errors": {k: v for k, v in made.items() if isinstance(v, str)}}


def _table(rows: list[dict]) -> None:
    cols = ["torch_fp32", "torch_bf16", *[f"ort_{level}" for level in LEVELS], "ort_int8", "ort_fp16"]
    header = (f"{'backbone':16s} {'export s':>8s} {'MB':>6s} " + " ".join(f"{c:>12s}" for c in cols)
              + f" {'parity (all)':>12s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['backbone']:16s} ERROR")
            continue
        lat, ratio = r["latency_s"], r["ratio_to_torch_fp32"]
        cells = [f"{lat[c]:.3f} ({ratio[c]:.2f})" if c in lat else "-" for c in cols]
        print(f"{r['backbone']:16s} {r['export_s']:8.1f} {r['file_mb']:6.1f} " + " ".join(f"{c:>12s}" for c in cells)
              + f" {max(r['parity_max_abs']['ort_all'].values()):12.1e}")
    print("latency in seconds (median), in brackets: median per-round ratio to torch_fp32")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", nargs="+", default=BACKBONES)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-variants", action="store_true", help="skip the int8 and fp16 graphs")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "export_speed.json"))
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:  # child process: one backbone, JSON on stdout
        print(json.dumps(measure_one(args.backbones[0], args.size, args.iters, args.warmup, args.threads,
                                     not args.no_variants)))
        return 0
    rows = []
    for backbone in args.backbones:
        cmd = [sys.executable, __file__, "--one", "--backbones", backbone, "--size", str(args.size),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--threads", str(args.threads)]
        cmd += ["--no-variants"] if args.no_variants else []
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{backbone}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"backbone": backbone, "error": proc.stderr[-500:]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  done {backbone:16s}: export {r['export_s']:.1f} s, onnxruntime/torch fp32 "
              f"{r['ratio_to_torch_fp32']['ort_all']:.2f}", file=sys.stderr)
    _table(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import torch

    meta = {"command": " ".join(["python", "bench/export_speed.py", *sys.argv[1:]]),
            "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "goal": {"ort_all_ratio_to_torch_fp32": 0.8}, "ort_allow_spinning": 0, "torch_keep_freed_memory": True,
            "load_average_1min_at_end": os.getloadavg()[0]}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
