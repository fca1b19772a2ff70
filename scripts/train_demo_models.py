"""Train the four tiny demo models so that their img2img results keep the picture.

    python scripts/train_demo_models.py --out data/models            # what ships (minutes on a CPU)
    python scripts/train_demo_models.py --out /tmp/m --vae-steps 5 --unet-steps 5   # smoke test

The shipped sample images (data/images, public domain / CC0) are the training set: random
crops and flips. One VAE is trained to reconstruct them and shared by all four models, as
SD 1.4 and 1.5 share theirs; each UNet is then trained to denoise their latents with its own
objective (epsilon for the SD 1.x-style models, v-prediction for the SD 2.x-style ones).
The text encoders stay random. Seeds are fixed; results are deterministic for one torch
build and thread count. tiny-sd15 is also written as a single-file (original-format)
checkpoint, tiny-sd15-single-file, with the same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from random_diffusion_dagster.demo.models import (  # noqa: E402
    SINGLE_FILE_DEMO,
    TINY_MODELS,
    build_tiny_pipeline,
    save_demo_model,
    save_single_file_demo,
)
from random_diffusion_dagster.engine.prompts import load_prompts  # noqa: E402


def load_training_images(folder: Path) -> list[torch.Tensor]:
    images = []
    for path in sorted(folder.iterdir()):
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
        images.append(torch.from_numpy(array).permute(2, 0, 1))
    return images


def random_crops(images: list[torch.Tensor], size: int, count: int, rng: random.Random) -> torch.Tensor:
    """`count` random square crops, from `size` up to the whole image, scaled to size x size and
    randomly flipped: the scales the models meet when whole photos are resized to their resolution."""
    crops = []
    for _ in range(count):
        image = rng.choice(images)
        side = rng.randint(min(size, *image.shape[1:]), min(image.shape[1:]))
        top, left = rng.randint(0, image.shape[1] - side), rng.randint(0, image.shape[2] - side)
        crop = image[:, top : top + side, left : left + side].unsqueeze(0)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        crops.append(crop.flip(-1) if rng.random() < 0.5 else crop)
    return torch.cat(crops)


def train_vae(vae, images, steps: int, size: int, batch: int, rng: random.Random, log) -> float:
    """Reconstruction (L1) with a light KL term; returns the latent scaling factor SD would use."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    vae.train()
    for step in range(steps):
        x = random_crops(images, size, batch, rng)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps}: loss {loss.item():.4f}")
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(random_crops(images, size, 32, rng)).latent_dist.mode()
    return float(1.0 / latents.std())


def train_unet(pipeline, images, prompts, steps: int, size: int, batch: int, rng: random.Random, log) -> None:
    """Denoise the VAE's latents of the training crops, with the scheduler's own objective."""
    import diffusers

    unet, vae = pipeline.unet, pipeline.vae
    # Whatever the sampler, SD models are trained on the DDPM forward process with the same betas.
    scheduler = diffusers.DDPMScheduler.from_config(pipeline.scheduler.config)
    prediction_type = scheduler.config.prediction_type
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    unet.train()
    for step in range(steps):
        with torch.no_grad():
            x = random_crops(images, size, batch, rng)
            latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
            # 10% empty prompts, so the unconditional branch of classifier-free guidance is learned too.
            texts = ["" if rng.random() < 0.1 else rng.choice(prompts) for _ in range(batch)]
            tokens = pipeline.tokenizer(
                texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
            )
            hidden = pipeline.text_encoder(tokens.input_ids)[0]
            noise = torch.randn_like(latents)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,))
            noisy = scheduler.add_noise(latents, noise, timesteps)
            target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=hidden).sample, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step}/{steps}: loss {loss.item():.4f}")
    unet.eval()


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors"))
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=PROJECT_ROOT / "data" / "images")
    parser.add_argument("--vae-steps", type=int, default=3000)
    parser.add_argument("--unet-steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    torch.manual_seed(0)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", flush=True)

    images = load_training_images(args.images)
    prompts = load_prompts(PROJECT_ROOT / "data" / "prompts.txt")
    pipelines = {recipe.name: build_tiny_pipeline(recipe) for recipe in TINY_MODELS}
    shared_vae = pipelines[TINY_MODELS[0].name].vae
    scaling_factor = train_vae(shared_vae, images, args.vae_steps, 64, args.batch, rng, log)
    shared_vae.register_to_config(scaling_factor=scaling_factor)
    log(f"vae scaling factor {scaling_factor:.4f}")
    for recipe in TINY_MODELS:
        pipeline = pipelines[recipe.name]
        pipeline.vae = shared_vae
        log(f"training {recipe.name} ({pipeline.scheduler.config.prediction_type})")
        train_unet(pipeline, images, prompts, args.unet_steps, recipe.sample_size * 8, args.batch, rng, log)
    # Saved after all training: the layout extras (safety checker) draw random numbers of their own.
    for recipe in TINY_MODELS:
        save_demo_model(
            pipelines[recipe.name],
            recipe,
            args.out / recipe.name,
            extra={"trained": True, "vae_steps": args.vae_steps, "unet_steps": args.unet_steps},
        )
    save_single_file_demo(args.out)
    sums = {name: checksums(args.out / name) for name in [r.name for r in TINY_MODELS] + [SINGLE_FILE_DEMO]}
    (args.out / "checksums.json").write_text(json.dumps(sums, indent=2) + "\n")
    log(f"done: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
