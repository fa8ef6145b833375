"""CPU backbone: eager against ``torch.compile``, and intra-op thread counts, on one 1008 view.

    python benchmarks/cpu_compile_threads.py --out benchmarks/results

Weights: the full-size random checkpoint in Meta's layout from ``shared/peer`` (seed 0, made
by ``make_meta_checkpoint.py`` and loaded by ``load_model``, as ``cpu_precision.py``); only
the ViT backbone (``model.vision_encoder.backbone``, what ``--compile-backbone`` compiles)
is timed, on one ``[1, 3, 1008, 1008]`` ``randn`` view (seed 0), under ``inference_mode``
and the project's ``precision_region`` (``float32``, or ``bfloat16`` autocast).

Variants (``--variants``, each ``KIND:PRECISION:THREADS``):

* ``eager``: the plain module;
* ``compile``: ``Sam3Stages(model, compile_backbone=True)``'s backbone, i.e.
  ``torch.compile(backbone)`` (inductor, default mode), as ``Segmentor(compile=True)``;
* ``autotune``: ``torch.compile(backbone, mode="max-autotune-no-cudagraphs")``;
* ``freezing``: ``torch.compile(backbone, options={"freezing": True})`` (inductor
  constant-folds the weights and prepacks them for oneDNN; not exposed by ovearth).

Method: every variant first runs once (``first_s``: for a compiled variant, compilation plus
its first run; a compilation is abandoned after ``--compile-timeout`` seconds). Then
``--rounds`` rounds run every variant once each, in the listed order (interleaved, so load
from other processes on the machine hits all variants alike); ``median_s`` is the median of
the rounds and ``ratio_vs_eager`` is the same-precision, same-threads eager variant's median
over this one's (>1: faster than eager); ``time_ratio_vs_threads`` is this variant's median over
the same variant's at another thread count (>1: slower). ``max_abs_diff_vs_eager_float32`` compares the
backbone's ``last_hidden_state`` with eager float32's.

Compilation is cold (a fresh ``TORCHINDUCTOR_CACHE_DIR`` unless ``--inductor-cache``).
Compiled kernels keep the thread count they were compiled with (inductor writes it into its
OpenMP pragmas), so compiled variants are only run with the threads they were compiled at.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ovearth import load_model
from ovearth.model.precision import precision_region
from ovearth.model.stages import Sam3Stages

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = (
    "eager:float32:2,compile:float32:2,eager:bfloat16:2,compile:bfloat16:2,"
    "freezing:bfloat16:2,autotune:bfloat16:2,eager:bfloat16:1"
)


@dataclass
class Variant:
    kind: str
    precision: str
    threads: int
    module: torch.nn.Module | None = None
    first_s: float | None = None
    times: list[float] = field(default_factory=list)
    max_abs_diff: float | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.precision}:{self.threads}"


class CompileTimeout(BaseException):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise CompileTimeout


def machine() -> dict:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?"
    )
    flags = next(
        (line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), []
    )
    return {
        "cpu_model": model,
        "logical_cpus": len(os.sched_getaffinity(0)),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": sorted(f for f in flags if f.startswith("amx")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "default_threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled,
    }


def build(kind: str, backbone: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    if kind == "eager":
        return backbone
    if kind == "compile":
        return Sam3Stages(model, compile_backbone=True)._backbone  # the project's own path
    if kind == "autotune":
        return torch.compile(backbone, mode="max-autotune-no-cudagraphs")
    if kind == "freezing":
        return torch.compile(backbone, options={"freezing": True})
    raise ValueError(kind)


def run_once(variant: Variant, pixels: torch.Tensor) -> tuple[float, torch.Tensor]:
    torch.set_num_threads(variant.threads)
    with torch.inference_mode(), precision_region(torch.device("cpu"), variant.precision):
        t0 = time.perf_counter()
        out = variant.module(pixels).last_hidden_state
        return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peer", type=Path, default=ROOT.parent / "shared" / "peer")
    parser.add_argument(
        "--checkpoint", type=Path, default=None, help="an existing sam3.pt (else made from --peer)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile-timeout", type=int, default=300)
    parser.add_argument(
        "--inductor-cache", default=None, help="TORCHINDUCTOR_CACHE_DIR (default: a fresh one, cold)"
    )
    args = parser.parse_args()
    cache = args.inductor_cache or tempfile.mkdtemp(prefix="cct_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    warnings.simplefilter("ignore")
    torch._dynamo.config.cache_size_limit = 64  # one cache entry per (backend, precision)
    variants = [Variant(k, p, int(t)) for k, p, t in (v.split(":") for v in args.variants.split(","))]
    result: dict = {
        "command": "python " + " ".join([sys.argv[0], *sys.argv[1:]]),
        "machine": machine(),
        "workload": "ViT backbone of SAM 3 (full size, random weights seed 0), one [1,3,1008,1008] view",
        "rounds": args.rounds,
        "inductor_cache": "given" if args.inductor_cache else "fresh (cold compile)",
        "variants": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cpu_compile_threads.json"
    t_start = time.perf_counter()

    def save() -> None:
        for v in variants:
            entry = {
                "kind": v.kind,
                "precision": v.precision,
                "threads": v.threads,
                "first_s": v.first_s,
                "times_s": v.times,
                "median_s": statistics.median(v.times) if v.times else None,
                "max_abs_diff_vs_eager_float32": v.max_abs_diff,
            }
            if v.error:
                entry["error"] = v.error
            base = next(
                (
                    b
                    for b in variants
                    if b.kind == "eager" and (b.precision, b.threads) == (v.precision, v.threads)
                ),
                None,
            )
            if base is not None and base.times and v.times:
                entry["ratio_vs_eager"] = statistics.median(base.times) / statistics.median(v.times)
            others = [
                o
                for o in variants
                if (o.kind, o.precision) == (v.kind, v.precision) and o.threads != v.threads
            ]
            if v.times and any(o.times for o in others):  # thread counts: this median over the other's
                entry["time_ratio_vs_threads"] = {
                    str(o.threads): statistics.median(v.times) / statistics.median(o.times)
                    for o in others
                    if o.times
                }
            result["variants"][v.name] = entry
        result["total_wall_s"] = time.perf_counter() - t_start
        path.write_text(json.dumps(result, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = Path(tmp) / "sam3.pt"
            maker = args.peer / "make_meta_checkpoint.py"
            subprocess.run([sys.executable, str(maker), str(checkpoint)], check=True, capture_output=True)
        model = load_model(str(checkpoint)).model
    backbone = model.vision_encoder.backbone
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 1008, 1008, generator=generator)
    print(f"model ready in {time.perf_counter() - t_start:.0f} s", flush=True)

    reference = None
    signal.signal(signal.SIGALRM, _alarm)
    for v in variants:
        v.module = build(v.kind, backbone, model)
        if v.kind != "eager":
            signal.alarm(args.compile_timeout)
        try:
            v.first_s, out = run_once(v, pixels)
        except CompileTimeout:
            v.error = f"did not compile within {args.compile_timeout} s"
            v.module = None
        except Exception as exc:  # noqa: BLE001
            v.error = f"{type(exc).__name__}: {str(exc)[:500]}"
            v.module = None
        finally:
            signal.alarm(0)
        if v.module is not None:
            if reference is None and v.name.startswith("eager:float32"):
                reference = out.float()
            if reference is not None:
                v.max_abs_diff = float((out.float() - reference).abs().max())
        print(v.name, "first", v.first_s, v.error or "", v.max_abs_diff, flush=True)
        save()
    for r in range(args.rounds):
        for v in variants:
            if v.module is None:
                continue
            seconds, _ = run_once(v, pixels)
            v.times.append(seconds)
            print(f"round {r} {v.name} {seconds:.2f} s", flush=True)
        save()
    save()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
