"""What reading a result's record costs: `read_record` against decoding the whole PNG (what it did before).

    python benchmarks/record_read.py --out benchmarks/results/record-read-cpu.json

One 512 px result written by `write_result_png` (noisy pixels, as a random-weight model's output), read N times
each way in one process. Every run's asset check reads each result the run recorded; reuse, staleness and the
report read them too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import dataclasses

    import numpy as np
    from PIL import Image

    from random_diffusion_dagster.engine.results import RECORD_CHUNK, ResultRecord, read_record, write_result_png

    fields = {f.name: 1 for f in dataclasses.fields(ResultRecord) if f.default is dataclasses.MISSING}
    record = ResultRecord(**(fields | {"key": "a.png", "fingerprint": "f" * 64, "prompt": "a cat", "seed": 7}))
    rng = np.random.default_rng(0)
    pixels = rng.random((args.size, args.size, 3)) * 60 + np.linspace(0, 190, args.size)[None, :, None]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "a.png"
        write_result_png(Image.fromarray(pixels.astype(np.uint8)), path, "a cat", record)

        def decode_whole():
            with Image.open(path) as image:
                return image.text[RECORD_CHUNK]  # loads (decodes) the image first

        def milliseconds(read) -> float:
            started = time.perf_counter()
            for _ in range(args.reads):
                read()
            return (time.perf_counter() - started) / args.reads * 1000

        assert read_record(path) == record
        result = {
            "machine": f"{os.cpu_count()} CPUs, {platform.machine()}",
            "size_px": args.size,
            "file_bytes": path.stat().st_size,
            "reads": args.reads,
            "decode_whole_png_ms": round(milliseconds(decode_whole), 3),
            "read_record_ms": round(milliseconds(lambda: read_record(path)), 3),
        }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
