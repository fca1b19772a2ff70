"""Img2img throughput of Stable-Diffusion-1.5-sized pipelines: plain diffusers against the engine.

    python benchmarks/gpu_throughput.py --out benchmarks/results/h100.json    # full size, needs CUDA
    python benchmarks/gpu_throughput.py --tiny --only engine --out /tmp/smoke.json   # tiny shapes, CPU, seconds
    python benchmarks/gpu_throughput.py --family sdxl --batch-size 8 --out benchmarks/results/h100-sdxl.json

With --tiny the compiled groups compile on the CPU too: a smoke test of their code (minutes).

No model hub is reachable, so the four models are built from SD-1.5's published component
shapes with random weights (compute and memory equal the real checkpoint's; pixels are
meaningless), saved with save_pretrained and loaded back with from_pretrained. Models 1-4
share one VAE and text encoder (as SD 1.4 and 1.5 do) and differ in their UNets.

Workload (the old server's): 512x512 inputs, strength 0.75, 50 steps (37 denoising steps),
guidance 7.5 with classifier-free guidance, EulerDiscreteScheduler. Variants, in one process:
  plain            diffusers as the old server used it: fp16, one image per call
  engine_*         the project's engine: batched, SDPA, channels_last, VAE slicing,
                   fp16 or bf16, optionally torch.compile
  end_to_end       engine.run_tasks: the same plus image loading, resizing and PNG writing
  tiny_vae_decode  decoding with a tiny autoencoder (changes pixels; reported apart)
  compiled         QKV fused and the UNet compiled (engine option compile_unet)
  compiled_vae     the VAE encoder and decoder compiled too (compile_vae); with _unsliced,
                   the batch decoded in one call; end_to_end_compiled: run_tasks with both.
  compiled_jit     compiled_vae compiled just in time (the others go through ahead-of-time packages)
  cuda_graphs      compiled with mode reduce-overhead: each step a replayed CUDA graph
  max_autotune     compiled with mode max-autotune (kernel choices benchmarked, CUDA graphs)
  int8, fp8        lossy: the UNet's linear layers quantized (catalog `quantize`, torchao), compiled
                   as compiled_vae; `fidelity_ssim` compares their outputs with the engine's
                   Not in the default --only: each batch size costs minutes of compiling
Each reports images/s and s/image (median of timed repeats after a warm-up batch),
the warm-up (and compile) time apart, and peak allocated/reserved CUDA memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from random_diffusion_dagster.demo.models import byte_level_vocab, img2img_pipeline  # noqa: E402
from random_diffusion_dagster.engine.catalog import parse_catalog  # noqa: E402
from random_diffusion_dagster.engine.pipelines import ModelLoadError, PipelineCache, Speedups  # noqa: E402
from random_diffusion_dagster.engine.runner import generate  # noqa: E402

# Published SD-1.5 component shapes (UNet 859.5M parameters, VAE 83.7M, CLIP ViT-L/14 text 123M).
FULL = {
    "unet": dict(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    "vae": dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512,
    ),
    "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    "resolution": 512,
    "steps": 50,
    "strength": 0.75,
}
TINY = {
    "unet": dict(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    ),
    "vae": dict(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    ),
    "text": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2),
    "resolution": 64,
    "steps": 10,
    "strength": 0.75,
}
# Published SDXL-base-1.0 component shapes (UNet 2.57B parameters, CLIP ViT-L/14 123M + OpenCLIP ViT-bigG/14 695M,
# VAE 83.7M with its fp32 upcast for decoding), at its 1024 px. The workload: 30 steps, strength 0.6.
SDXL_FULL = {
    "unet": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
    "vae": dict(FULL["vae"], sample_size=1024, scaling_factor=0.13025, force_upcast=True),
    "text": dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
    "text_2": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_attention_heads=20,
        num_hidden_layers=32,
        projection_dim=1280,
        hidden_act="gelu",
    ),
    "resolution": 1024,
    "steps": 30,
    "strength": 0.6,
}
SDXL_TINY = {
    "unet": dict(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # text_2's projection (32) + 6 time ids x 8
        norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    ),
    "vae": dict(TINY["vae"], scaling_factor=0.13025, force_upcast=True),
    "text": TINY["text"],
    "text_2": dict(TINY["text"], projection_dim=32, hidden_act="gelu"),
    "resolution": 64,
    "steps": 10,
    "strength": 0.6,
}
# Engine speedups timed per compiled group; each batch shape compiles once, in the warm-up.
COMPILED_GROUPS = {
    "compiled": Speedups(compile_unet=True),  # QKV projections fused, UNet compiled
    "compiled_vae": Speedups(compile_unet=True, compile_vae=True),  # VAE encoder and decoder too
    # The same compiled just in time in the process, not through ahead-of-time packages (engine/ahead_of_time.py).
    "compiled_jit": Speedups(compile_unet=True, compile_vae=True, ahead_of_time=False),
    "compiled_vae_unsliced": Speedups(vae_slicing=False, compile_unet=True, compile_vae=True),  # whole-batch decode
    # Each denoising step (and the VAE) replayed as a recorded CUDA graph: no per-kernel launch cost.
    "cuda_graphs": Speedups(compile_unet=True, compile_vae=True, compile_mode="reduce-overhead"),
    # Kernel choices benchmarked while compiling (several minutes longer), then CUDA graphs as above.
    "max_autotune": Speedups(compile_unet=True, compile_vae=True, compile_mode="max-autotune"),
}
# Lossy: the catalog entry's `quantize` (torchao), compiled as compiled_vae; each with its outputs' SSIM against the
# default engine path's on the same images, prompts and seeds (`fidelity_ssim`).
LOSSY_GROUPS = {"int8": "int8", "fp8": "fp8"}
PROMPTS = ["a cat dancing in the rain", "an oil painting of a lighthouse at dusk", "a city at night, neon"]


def build_models(shapes: dict, root: Path, device: str, count: int = 4) -> list[Path]:
    """Save `count` pipelines sharing one VAE and text encoder, each with its own UNet."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    with torch.device(device):
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"],
                eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"],
                **shapes["text"],
            )
        )
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, **shapes["vae"])
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    folders = []
    for index in range(count):
        with torch.device(device):
            torch.manual_seed(100 + index)
            unet = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
        pipeline = img2img_pipeline(vae, text_encoder, tokenizer, unet, scheduler)
        folder = root / f"sd15-shaped-{index}"
        pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
        folders.append(folder)
        del unet, pipeline
    return folders


def build_sdxl(shapes: dict, root: Path, device: str) -> Path:
    """Save one SDXL-shaped img2img pipeline with random weights: two text encoders (the second with its pooled
    projection), the text-time conditioned UNet, the VAE that decodes in fp32."""
    import diffusers
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    ids = dict(
        vocab_size=49408,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    with torch.device(device):
        torch.manual_seed(0)
        text_encoder = CLIPTextModel(CLIPTextConfig(**ids, **shapes["text"]))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**ids, **shapes["text_2"]))
        vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, **shapes["vae"])
        unet = diffusers.UNet2DConditionModel(in_channels=4, out_channels=4, **shapes["unet"])
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipeline = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
    )
    folder = root / "sdxl-shaped"
    pipeline.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    del pipeline, unet, text_encoder, text_encoder_2, vae
    return folder


def run_sdxl(args) -> dict:
    """The SDXL figure: an SDXL-sized pipeline at 1024 px, batched through the engine against plain diffusers one
    image per call, then the peak GPU memory with it and two SD-1.5-sized pipelines resident in one cache."""
    import diffusers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes, sd15_shapes = (SDXL_TINY, TINY) if args.tiny else (SDXL_FULL, FULL)
    root = Path(tempfile.mkdtemp(prefix="sdxl-shaped-"))
    started = time.perf_counter()
    folder = build_sdxl(shapes, root, device)
    print(f"built and saved the SDXL-shaped model in {time.perf_counter() - started:.1f} s", flush=True)
    fp16 = "float16" if device == "cuda" else "float32"
    (spec,) = catalog([folder], shapes, fp16)
    images = source_images(args.batch_size, shapes["resolution"])

    plain = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, dtype=getattr(torch, fp16)).to(device)
    plain.set_progress_bar_config(disable=True)
    plain_result = time_variant("sdxl_plain_batch1", engine_call(plain, spec, images[:1], device), 1, 2, device)
    del plain
    torch.cuda.empty_cache() if device == "cuda" else None

    cache = PipelineCache(device=device, max_models=3)
    pipeline, load_seconds = cache.get(spec)
    batched = time_variant(
        f"sdxl_engine_batch{args.batch_size}",
        engine_call(pipeline, spec, images, device),
        args.batch_size,
        args.repeats,
        device,
    )
    batched["speedup_vs_plain"] = round(plain_result["seconds_per_image"] / batched["seconds_per_image"], 2)

    sd15_specs = catalog(build_models(sd15_shapes, root, device, count=2), sd15_shapes, fp16)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for index, each in enumerate([spec, *sd15_specs]):
        generate(cache.get(each)[0], each, PROMPTS[:1], source_images(1, each.resolution), [index], device)
    resident = {
        "resident": cache.resident,
        "resident_weights_mb": round(cache.resident_bytes / 2**20, 1),
        "peak_allocated_mb": peak("allocated", device),
        "peak_reserved_mb": peak("reserved", device),
    }
    print(f"one SDXL and two SD-1.5-sized resident: {resident}", flush=True)
    cache.clear()
    return {
        "family": "sdxl",
        "device": device_name(device),
        "images_per_s": batched["images_per_s"],
        "plain_images_per_s": plain_result["images_per_s"],
        "vram_peak_reserved_mb": resident["peak_reserved_mb"],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "workload": {
            "resolution": shapes["resolution"],
            "num_inference_steps": shapes["steps"],
            "strength": shapes["strength"],
            "guidance_scale": 7.5,
            "batch_size": args.batch_size,
            "tiny_shapes": args.tiny,
        },
        "load_seconds": round(load_seconds, 2),
        "variants": [plain_result, batched],
        "sdxl_and_two_sd15_resident": resident,
    }


def catalog_document(folders: list[Path], shapes: dict, dtype: str) -> dict:
    """The catalog naming the built pipelines, with the benchmark's settings (also written out by
    orchestrated_throughput.py, so both benchmarks run the same models the same way)."""
    return {
        "defaults": {
            "resolution": shapes["resolution"],
            "num_inference_steps": shapes["steps"],
            "strength": shapes["strength"],
            "guidance_scale": 7.5,
            "dtype": dtype,
        },
        "models": [{"name": f.name, "path": str(f)} for f in folders],
    }


def catalog(folders: list[Path], shapes: dict, dtype: str) -> list:
    return parse_catalog(catalog_document(folders, shapes, dtype), base_dir=folders[0].parent)


def source_images(count: int, resolution: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)) for _ in range(count)]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_variant(name: str, call, batch: int, repeats: int, device: str, images_per_call: int | None = None) -> dict:
    """Warm up once (compilation lands here), then time `repeats` calls of `images_per_call` images.

    `images_per_call` defaults to one batch.
    """
    images_per_call = images_per_call or batch
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    call(0)
    synchronize(device)
    warmup = time.perf_counter() - started
    seconds = []
    for repeat in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        call(repeat + 1)
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    per_image = statistics.median(seconds) / images_per_call
    result = {
        "variant": name,
        "device": device_name(device),
        "batch_size": batch,
        "images_per_call": images_per_call,
        "repeats": repeats,
        "warmup_seconds": round(warmup, 3),
        "seconds_per_image": round(per_image, 4),
        "images_per_s": round(1 / per_image, 3),
        "spread_seconds": [round(s, 3) for s in seconds],
        "peak_allocated_mb": peak("allocated", device),
        "peak_reserved_mb": peak("reserved", device),
    }
    print("RESULT " + json.dumps(result), flush=True)  # survives a run cut short
    print(
        f"{name:32s} {result['images_per_s']:7.2f} img/s  {per_image:.4f} s/img  warm-up {warmup:.1f} s  "
        f"peak {result['peak_allocated_mb']:.0f}/{result['peak_reserved_mb']:.0f} MiB",
        flush=True,
    )
    return result


def peak(kind: str, device: str) -> float:
    if not device.startswith("cuda"):
        return 0.0
    value = torch.cuda.max_memory_allocated() if kind == "allocated" else torch.cuda.max_memory_reserved()
    return round(value / 2**20, 1)


def device_name(device: str) -> str:
    return (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"cpu ({platform.processor() or platform.machine()})"
    )


def engine_call(pipeline, spec, images, device):
    def call(repeat: int):
        seeds = [1000 * repeat + i for i in range(len(images))]
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
        return generate(pipeline, spec, prompts, images, seeds, device)[0]

    return call


def flops_per_image(pipeline, spec, device: str) -> float:
    """Count the FLOPs of one image: text encoding, VAE encode, the UNet steps with CFG, VAE decode."""
    from torch.utils.flop_counter import FlopCounterMode

    resolution, dtype = spec.resolution, pipeline.unet.dtype
    latent = resolution // 8
    unet = getattr(pipeline.unet, "_orig_mod", pipeline.unet)
    with torch.inference_mode():
        tokens = torch.zeros(2, 77, dtype=torch.long, device=device)
        with FlopCounterMode(display=False) as text_count:
            hidden = pipeline.text_encoder(tokens)[0]
        image = torch.randn(1, 3, resolution, resolution, device=device, dtype=dtype)
        with FlopCounterMode(display=False) as encode_count:
            pipeline.vae.encode(image)
        latents = torch.randn(2, 4, latent, latent, device=device, dtype=dtype)
        with FlopCounterMode(display=False) as unet_count:
            unet(latents, 999, encoder_hidden_states=hidden)
        with FlopCounterMode(display=False) as decode_count:
            pipeline.vae.decode(latents[:1])
    steps = spec.denoising_steps
    parts = {
        "text": text_count.get_total_flops() / 2,
        "vae_encode": encode_count.get_total_flops(),
        "unet_cfg_step": unet_count.get_total_flops(),
        "vae_decode": decode_count.get_total_flops(),
    }
    total = parts["text"] + parts["vae_encode"] + steps * parts["unet_cfg_step"] + parts["vae_decode"]
    return total, {k: round(v / 1e12, 4) for k, v in parts.items()}


def matmul_tflops(device: str) -> float:
    """Measured dense bf16 matrix rate: the ceiling the floor is computed against."""
    size = 8192 if device.startswith("cuda") else 512
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(10):
        a @ b
    synchronize(device)
    return 2 * size**3 * 10 / (time.perf_counter() - started) / 1e12


def run(args) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shapes = TINY if args.tiny else FULL
    batch, repeats = args.batch_size, args.repeats
    root = Path(tempfile.mkdtemp(prefix="sd15-shaped-"))
    started = time.perf_counter()
    wanted = set(args.only.split(","))
    folders = build_models(shapes, root, device, count=4 if "four_models" in wanted else 1)
    print(f"built and saved {len(folders)} models in {time.perf_counter() - started:.1f} s", flush=True)
    fp16 = "float16" if device == "cuda" else "float32"
    specs = catalog(folders, shapes, fp16)
    images = source_images(batch, shapes["resolution"])
    results, extra = [], {}

    # (a) plain diffusers, the old server's way: fp16, one image per call, default settings.
    import diffusers

    plain = diffusers.StableDiffusionImg2ImgPipeline.from_pretrained(folders[0], dtype=getattr(torch, fp16)).to(device)
    plain.set_progress_bar_config(disable=True)
    plain_result = time_variant(
        f"plain_{fp16}_batch1", engine_call(plain, specs[0], images[:1], device), 1, args.plain_repeats, device
    )
    results.append(plain_result)
    # The same four images one at a time, with the seeds and prompts the batched call gives them.
    single_outputs = [
        generate(plain, specs[0], [PROMPTS[i % len(PROMPTS)]], [image], [i], device)[0][0]
        for i, image in enumerate(images[:4])
    ]
    del plain
    torch.cuda.empty_cache() if device == "cuda" else None

    # (b) the engine path, loaded through the engine's cache with its default speedups.
    cache = PipelineCache(device=device, max_models=4)
    pipeline, _ = cache.get(specs[0])
    if "engine" in wanted:
        results.append(
            time_variant(
                f"engine_{fp16}_batch{batch}", engine_call(pipeline, specs[0], images, device), batch, repeats, device
            )
        )
    compile_sizes = [int(b) for b in args.compile_batch_sizes.split(",")]
    references = {  # what the lossy groups are compared with: the default path's outputs
        size: engine_call(pipeline, specs[0], source_images(size, shapes["resolution"]), device)(0)
        for size in (compile_sizes if wanted & set(LOSSY_GROUPS) else [])
    }
    batched = engine_call(pipeline, specs[0], images[:4], device)(0)
    differences = [
        np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32))
        for a, b in zip(batched, single_outputs, strict=False)
    ]
    extra["batched_vs_single"] = {
        "mean_abs_diff_0_255": round(float(np.mean([d.mean() for d in differences])), 4),
        "max_abs_diff_0_255": float(max(d.max() for d in differences)),
    }
    print(f"batched vs one-at-a-time: {extra['batched_vs_single']}", flush=True)

    # Throughput floor: FLOPs per image over the measured matrix rate.
    flops, parts = flops_per_image(pipeline, specs[0], device)
    rate = matmul_tflops(device)
    extra["floor"] = {
        "tflop_per_image": round(flops / 1e12, 3),
        "parts_tflop": parts,
        "measured_bf16_matmul_tflops": round(rate, 1),
        "floor_seconds_per_image": round(flops / 1e12 / rate, 4),
    }
    print(f"floor: {extra['floor']}", flush=True)

    if device == "cuda" and "four_models" in wanted:
        # (c) four SD-1.5-sized models resident at once, identical components shared.
        torch.cuda.reset_peak_memory_stats()
        for spec in specs[1:]:
            cache.get(spec)
        for index, spec in enumerate(specs):
            generate(cache.get(spec)[0], spec, PROMPTS[:1], images[:1], [index], device)
        extra["four_models"] = {
            "resident": cache.resident,
            "resident_weights_mb": round(cache.resident_bytes / 2**20, 1),
            "shared_components": cache.shared_components,
            "allocated_mb": round(torch.cuda.memory_allocated() / 2**20, 1),
            "peak_allocated_mb": peak("allocated", device),
            "peak_reserved_mb": peak("reserved", device),
        }
        print(f"four models: {extra['four_models']}", flush=True)
    cache.clear()
    if device == "cuda" and "bf16" in wanted:
        # (d) bf16.
        bf16_specs = catalog(folders, shapes, "bfloat16")
        bf16_cache = PipelineCache(device=device, max_models=1)
        pipeline, _ = bf16_cache.get(bf16_specs[0])
        results.append(
            time_variant(
                f"engine_bfloat16_batch{batch}",
                engine_call(pipeline, bf16_specs[0], images, device),
                batch,
                repeats,
                device,
            )
        )
        bf16_cache.clear()
    if device == "cuda" and "end_to_end" in wanted:
        # (e) end to end through run_tasks: source loading, resizing and PNG writing included.
        results.append(end_to_end(specs[0], images, root, device, batch, repeats, batches=args.end_to_end_batches))
    if device == "cuda" and "tiny_vae" in wanted:
        # (f) tiny VAE decode (changes pixels).
        pipeline, _ = cache.get(specs[0])
        full_vae = pipeline.vae
        pipeline.vae = diffusers.AutoencoderTiny().to(device, torch.float16)
        results.append(
            time_variant(
                f"engine_{fp16}_batch{batch}_tiny_vae_decode",
                engine_call(pipeline, specs[0], images, device),
                batch,
                repeats,
                device,
            )
        )
        pipeline.vae = full_vae
        cache.clear()
    compile_here = device == "cuda" or args.tiny  # on a CPU only as a (slow) smoke test of the code path
    for group, speedups in COMPILED_GROUPS.items():
        if compile_here and group in wanted:
            compiled_cache = PipelineCache(device=device, max_models=1, speedups=speedups)
            pipeline, _ = compiled_cache.get(specs[0])
            results.extend(compiled_variants(group, pipeline, specs[0], shapes, compile_sizes, repeats, device, extra))
            compiled_cache.clear()
    for group, mode in LOSSY_GROUPS.items():
        if compile_here and group in wanted:
            results.extend(
                lossy_variants(
                    group, dataclasses.replace(specs[0], quantize=mode), shapes, references, device, args, extra
                )
            )
    if compile_here and "end_to_end_compiled" in wanted:
        # (h) run_tasks with the UNet and VAE compiled: what a Dagster run with both options gets.
        results.append(
            end_to_end(
                specs[0],
                images,
                root,
                device,
                batch,
                repeats,
                COMPILED_GROUPS["compiled_vae"],
                batches=args.end_to_end_batches,
            )
        )
    plain_per_image = plain_result["seconds_per_image"]
    for result in results:
        result["speedup_vs_plain"] = round(plain_per_image / result["seconds_per_image"], 2)
        result["fraction_of_floor"] = round(extra["floor"]["floor_seconds_per_image"] / result["seconds_per_image"], 3)
    return {
        "device": device_name(device),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "workload": {
            "resolution": shapes["resolution"],
            "num_inference_steps": shapes["steps"],
            "strength": shapes["strength"],
            "guidance_scale": 7.5,
            "scheduler": "EulerDiscreteScheduler",
            "tiny_shapes": args.tiny,
        },
        "variants": results,
        **extra,
    }


def compiled_variants(label, pipeline, spec, shapes, sizes, repeats, device, extra) -> list[dict]:
    """Time a compiled pipeline at each batch size (each shape compiles once, in the warm-up)."""
    results = []
    for size in sizes:
        name = f"engine_{spec.dtype}_batch{size}_{label}"
        sized = source_images(size, shapes["resolution"])
        try:
            results.append(time_variant(name, engine_call(pipeline, spec, sized, device), size, repeats, device))
        except Exception as exc:  # noqa: BLE001 - a compiler failure is a result to report, not a crash
            extra.setdefault("compile_errors", []).append(f"{name}: {type(exc).__name__}: {exc}"[:2000])
            print(extra["compile_errors"][-1], flush=True)
    return results


def lossy_variants(group: str, spec, shapes: dict, references: dict, device: str, args, extra: dict) -> list[dict]:
    """Time a quantized entry at each batch size and measure its outputs' SSIM against the default path's."""
    from skimage.metrics import structural_similarity

    cache = PipelineCache(device=device, max_models=1, speedups=COMPILED_GROUPS["compiled_vae"])
    try:
        pipeline, _ = cache.get(spec)
    except ModelLoadError as exc:  # no torchao here: a result to report
        extra.setdefault("compile_errors", []).append(f"{group}: {exc}")
        return []
    results = compiled_variants(group, pipeline, spec, shapes, list(references), args.repeats, device, extra)
    for size, expected in references.items():
        try:
            outputs = engine_call(pipeline, spec, source_images(size, shapes["resolution"]), device)(0)
        except Exception as exc:  # noqa: BLE001 - fp8 without a Hopper GPU, say: reported by compiled_variants
            print(f"{group} batch {size}: no outputs to compare ({type(exc).__name__})", flush=True)
            continue
        scores = [
            structural_similarity(np.asarray(a), np.asarray(b), channel_axis=2)
            for a, b in zip(outputs, expected, strict=True)
        ]
        extra.setdefault("fidelity_ssim", {})[f"{group}_batch{size}"] = round(float(np.mean(scores)), 4)
        print(f"{group} batch {size}: SSIM {np.mean(scores):.4f} against the default path", flush=True)
    cache.clear()
    return results


def end_to_end(
    spec, images, root: Path, device: str, batch: int, repeats: int, speedups: Speedups = Speedups(), batches: int = 1
) -> dict:
    """run_tasks over `batches` batches per call: with more than one, PNG writes overlap the next batch."""
    from random_diffusion_dagster.engine.plan import ImageTask, snapshot_source
    from random_diffusion_dagster.engine.runner import run_tasks

    folder = root / "sources"
    folder.mkdir(exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        paths.append(folder / f"src{index}.png")
        image.save(paths[-1])
    snapshots = [snapshot_source(p) for p in paths]
    cache = PipelineCache(device=device, max_models=1, speedups=speedups)

    def call(repeat: int):
        tasks = [
            ImageTask(
                f"r{repeat}-{i}",
                str(p),
                snapshot,
                PROMPTS[i % 3],
                spec,
                1000 * repeat + i,
                0,
                str(root / "outputs" / f"r{repeat}-{i}.png"),
            )
            for i, (p, snapshot) in enumerate(zip(paths * batches, snapshots * batches, strict=False))
        ]
        summary = run_tasks(tasks, cache, batch_size=batch, log=lambda message: None)
        assert all(r.status == "generated" for r in summary.results), [r.error for r in summary.results]

    label = ("_compiled" if speedups.compile_unet else "") + (f"_{batches}_batches_per_run" if batches > 1 else "")
    result = time_variant(f"end_to_end_run_jobs_batch{batch}{label}", call, batch, repeats, device, batch * batches)
    cache.clear()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU smoke test)")
    parser.add_argument(
        "--family",
        choices=("sd15", "sdxl"),
        default="sd15",
        help="sdxl: the SDXL-sized figure alone (batched vs plain, peak memory beside two SD-1.5-sized models)",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plain-repeats", type=int, default=8)
    parser.add_argument(
        "--only",
        default="engine,four_models,bf16,end_to_end,tiny_vae,compiled",
        help="variant groups to run besides plain (comma-separated)",
    )
    parser.add_argument("--compile-batch-sizes", default="16")
    parser.add_argument(
        "--end-to-end-batches", type=int, default=1, help="batches per run_tasks call in the end_to_end groups"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = run_sdxl(args) if args.family == "sdxl" else run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
