"""Third-party output kept off the console: notices known to be harmless here, and progress bars.

Each filter drops one exact notice and nothing else, so real warnings from the same
libraries still reach the console and the Dagster run log. The engine's own warnings go to
the run's log (engine_warnings_to).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# The inpaint and ControlNet pipelines that paired inputs run through (PipelineCache.with_pairs).
PAIRED_PIPELINES = (
    "stable_diffusion.pipeline_stable_diffusion_inpaint",
    "stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint",
    "stable_diffusion_3.pipeline_stable_diffusion_3_inpaint",
    "flux.pipeline_flux_inpaint",
    "controlnet.pipeline_controlnet_img2img",
    "controlnet.pipeline_controlnet_inpaint",
    "controlnet.pipeline_controlnet_sd_xl_img2img",
    "controlnet.pipeline_controlnet_inpaint_sd_xl",
)

# (logger, text that identifies the notice, why it is harmless here)
HARMLESS_NOTICES = (
    # Image processors fall back to their PIL versions without torchvision; diffusion uses none of them.
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    # Printed when a model with no float32-only modules (the list is empty) is cast: nothing to keep.
    ("diffusers.models.modeling_utils", "that should be kept in float32: []"),
    # A prompt over CLIP's 77 tokens, printed with the cut-off text at every call and when tokenized whole: the
    # project records `prompt_truncated` on the image and logs one short warning for it instead.
    (
        "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img",
        "The following part of your input was truncated because CLIP can only handle sequences up to",
    ),
    # The same for SDXL's two CLIP encoders, and for SD3's and Flux.1's CLIP (which always reads the first 77
    # tokens; T5 reads the rest) and T5 (`prompt_truncated` records when T5's budget runs out: families.py).
    *(
        (f"diffusers.pipelines.{module}", notice)
        for module in (
            "stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img",
            "stable_diffusion_3.pipeline_stable_diffusion_3_img2img",
            "flux.pipeline_flux_img2img",
            *PAIRED_PIPELINES,
        )
        for notice in (
            "The following part of your input was truncated because CLIP can only handle sequences up to",
            "The following part of your input was truncated because `max_sequence_length` is set to",
        )
    ),
    # Said by the ControlNet pipelines at every call with several ControlNets and several prompts, although each image
    # gets its own control images (runner._infer passes one batch of images per ControlNet).
    *(
        (f"diffusers.pipelines.{module}", "ControlNets and you have passed")
        for module in PAIRED_PIPELINES
        if module.startswith("controlnet.")
    ),
    ("transformers.tokenization_utils_base", "Token indices sequence length is longer than the specified maximum"),
    # A LoRA with UNet weights only (most are) has none for the text encoder: the project's own line for each adapter
    # load names the components it went into (PipelineCache).
    ("diffusers.loaders.lora_base", "No LoRA keys associated to CLIPTextModel"),  # SDXL's ...WithProjection too
    # An entry that asks for `dtype: float16` on the CPU: recent torch runs it there (slowly), which diffusers' notice
    # at every move says will fail.
    ("diffusers.pipelines.pipeline_utils", "cannot run with `cpu` device"),
    # A LoRA that does not fit its base: diffusers logs peft's error, a line per mismatched layer, then raises it; the
    # project's own message for the entry's images names the file, the base's family and the first misfit.
    ("diffusers.loaders.peft", "was unsuccessful with the following error"),
    # load_textual_inversion grows the text encoder's token table; the new rows hold the embedding's vectors, written
    # over whatever initial values the notice describes (PipelineCache._activate_embeddings).
    ("transformers.modeling_utils", "The new embeddings will be initialized from a multivariate normal distribution"),
    # torchao (catalog `quantize`) tries its optional C++ kernels (MX formats, CUTLASS for sm90a), built for one torch
    # version; int8 and float8 quantization run on torch's own kernels without them.
    ("torchao", "Failed to load "),
    # torchao's int8 matrix kernels for GPUs are written in Triton, which a CPU-only torch lacks; on a CPU there is
    # nothing for them to run on.
    ("torchao.kernel.intmm", "Detected no triton, on systems without Triton"),
    # diffusers' reader of torchao-serialized checkpoints misses classes newer torchao moved; the project quantizes
    # at load (catalog `quantize`) and never reads such checkpoints.
    ("diffusers.quantizers.torchao.torchao_quantizer", "Unable to import `torchao` Tensor objects"),
    # torch's reader of a package whose archive it cannot open (damaged on shared storage); the project's own warning
    # names the package and compiles it again (ahead_of_time.py), and its key holds torch's version, so no package
    # is another version's.
    ("torch._inductor.package.package", "Loading outdated pt2 file"),
    # torchao registers its enums with torch's pytree at import, which a newer torch no longer needs.
    ("torch.utils._pytree", "is an Enum subclass and is now natively supported by torch.compile"),
)


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def silence_harmless_notices() -> None:
    """Install the filters once (idempotent: loggers keep one filter per notice)."""
    for logger_name, text in HARMLESS_NOTICES:
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropNotice) and f.text == text for f in logger.filters):
            logger.addFilter(_DropNotice(text))


def quiet_libraries() -> None:
    """Harmless notices filtered and diffusers' and transformers' progress bars off (loading, saving): the
    project logs one line per model instead."""
    silence_harmless_notices()
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class _Forward(logging.Handler):
    def __init__(self, log: Callable[[str], None]):
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log(record.getMessage())


@contextmanager
def engine_warnings_to(log: Callable[[str], None]) -> Iterator[None]:
    """The engine's own logged warnings (a compiled part falling back: ahead_of_time.py) go to `log`, the run's
    log, while the block runs, and not to the console."""
    logger = logging.getLogger(__package__)
    handler, propagate = _Forward(log), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
