"""How much of the picture the demo models keep: SSIM between source and result.

    python benchmarks/demo_fidelity.py --out benchmarks/results/demo-fidelity.json \
        --sheet benchmarks/results/demo-contact-sheet.png

For every shipped sample image and every model of data/models.yaml, at strength 0.3 and
0.6: the structural similarity (SSIM, Wang et al. 2004: grayscale, 11x11 Gaussian window,
sigma 1.5) between the source, resized to the result's size, and the result. The shipped,
trained demo models are compared with the same architectures with random weights. The
sheet shows source | trained 0.3 | trained 0.6 | random 0.3 per image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from random_diffusion_dagster.demo.models import build_demo_models  # noqa: E402
from random_diffusion_dagster.engine.catalog import load_catalog  # noqa: E402
from random_diffusion_dagster.engine.images import image_strip, load_rgb, prepare_model_input  # noqa: E402
from random_diffusion_dagster.engine.pipelines import PipelineCache  # noqa: E402
from random_diffusion_dagster.engine.runner import generate  # noqa: E402

STRENGTHS = (0.3, 0.6)
PROMPT = "an oil painting of a lighthouse at dusk"


def _gaussian_blur(image: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, radius, mode="reflect")
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, padded)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def ssim(a: Image.Image, b: Image.Image) -> float:
    """Mean SSIM of two same-size images, on their grayscale (L) values in 0..255."""
    x = np.asarray(a.convert("L"), dtype=np.float64)
    y = np.asarray(b.convert("L"), dtype=np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = _gaussian_blur(x), _gaussian_blur(y)
    vx, vy = _gaussian_blur(x * x) - mx**2, _gaussian_blur(y * y) - my**2
    cov = _gaussian_blur(x * y) - mx * my
    return float((((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))).mean())


def results(specs, sources, strength: float) -> dict[tuple[str, str], tuple[Image.Image, Image.Image]]:
    """(model, image name) -> (source at model size, result)."""
    cache = PipelineCache(device="cpu", max_models=1)
    out = {}
    for spec in specs:
        spec = dataclasses.replace(spec, strength=strength)
        pipeline, _ = cache.get(spec)
        for index, (name, image) in enumerate(sources):
            source = prepare_model_input(image, spec.resolution).image  # as the runner hands it to the pipeline
            (result,), _ = generate(pipeline, spec, [PROMPT], [source], [index], "cpu")
            out[(spec.name, name)] = (source, result)
    cache.clear()
    return out


def _relocate(spec, models_root: Path, new_root: Path):
    """The same catalog entry with its files (source, config folder) under `new_root` instead."""

    def move(path):
        return str(new_root / Path(path).relative_to(models_root.resolve())) if path else path

    return dataclasses.replace(spec, source=move(spec.source), config=move(spec.config))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=Path, default=PROJECT_ROOT / "data" / "models.yaml")
    parser.add_argument("--images", type=Path, default=PROJECT_ROOT / "data" / "images")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sheet", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    trained = load_catalog(args.catalog)
    sources = [(p.name, load_rgb(p)) for p in sorted(args.images.iterdir())]
    with tempfile.TemporaryDirectory() as tmp:
        build_demo_models(tmp)
        random_specs = [_relocate(spec, args.catalog.parent / "models", Path(tmp)) for spec in trained]
        runs = {
            (kind, strength): results(specs, sources, strength)
            for kind, specs in (("trained", trained), ("random", random_specs))
            for strength in STRENGTHS
        }
    report = {
        "metric": "SSIM, grayscale, 11x11 Gaussian window (sigma 1.5)",
        "prompt": PROMPT,
        "images": len(sources),
        "models": [s.name for s in trained],
        "mean_ssim": {},
        "per_model": {},
    }
    for (kind, strength), pairs in runs.items():
        scores = {key: ssim(*pair) for key, pair in pairs.items()}
        report["mean_ssim"][f"{kind}@{strength}"] = round(statistics.mean(scores.values()), 4)
        for spec in trained:
            values = [v for (model, _), v in scores.items() if model == spec.name]
            report["per_model"][f"{kind}@{strength}:{spec.name}"] = round(statistics.mean(values), 4)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["mean_ssim"], indent=2))
    if args.sheet:
        rows = []
        for index, (name, _) in enumerate(sources):
            model = trained[index % len(trained)].name
            source, trained_low = runs[("trained", 0.3)][(model, name)]
            rows.append(
                image_strip(
                    [
                        source,
                        trained_low,
                        runs[("trained", 0.6)][(model, name)][1],
                        runs[("random", 0.3)][(model, name)][1],
                    ],
                    height=128,
                )
            )
        sheet = Image.new("RGB", (max(r.width for r in rows), 132 * len(rows)), "white")
        for index, row in enumerate(rows):
            sheet.paste(row, (0, index * 132))
        sheet.save(args.sheet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
