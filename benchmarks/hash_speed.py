"""Cost of the content fingerprint: SHA-256 throughput here, extrapolated to the SAM 3 checkpoint.

    python benchmarks/hash_speed.py --size-gb 1 --out benchmarks/results

Writes a file of random bytes, hashes it with ``ovearth.model.fingerprint.sha256_file``
(first call: reads every byte; second call: remembered, a ``stat`` and a JSON read),
and extrapolates the first call to the 3,450,062,305-byte ``sam3.pt`` (the released
``model.safetensors`` is about the same size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

SAM3_BYTES = 3_450_062_305


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["OVEARTH_CACHE"] = tmp  # a fresh digest store
        from ovearth.model.fingerprint import sha256_file

        path = Path(tmp) / "weights.bin"
        size = int(args.size_gb * 2**30)
        with path.open("wb") as handle:
            for _ in range(size // (64 << 20)):
                handle.write(os.urandom(64 << 20))
        start = time.perf_counter()
        sha256_file(path)
        first = time.perf_counter() - start
        start = time.perf_counter()
        sha256_file(path)
        again = time.perf_counter() - start
    rate = size / first
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "bytes": size,
        "first_call_s": round(first, 3),
        "throughput_gb_per_s": round(rate / 1e9, 3),
        "remembered_call_ms": round(1000 * again, 3),
        "sam3_checkpoint_first_call_s": round(SAM3_BYTES / rate, 2),
        "note": "first call includes reading the file (page cache warm: it was just written)",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hash_speed_cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
