"""The backbone seam: an Embedder turns pixel batches into global vectors and patch-token grids.

Another backbone plugs in from Python by implementing the same three members
(`preprocess`, `provenance`, `embed`) and passing it to `index_collection(..., embedder=...)`.
"""
import hashlib
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from .attention import amx_available, avx512_bf16_available, use_cpu_attention
from .cpu_fusion import fuse_for_cpu, unpack_weights
from .errors import IndexerError, ModelUnavailable, NonFiniteOutput
from .graphs import OneImageGraphs
from .images import Preprocess
from .normalization import normalization_for

log = logging.getLogger(__name__)

DEFAULT_MODEL = "mirekphd/dinov3-vit7b16-pretrain-sat493m-fp16"
POOLINGS = ("cls", "mean", "cls+mean")
# The ViT-S/16's fastest of 4-64 on the 2-core Xeon with AMX, all rewrites: 1.04x batch 32 (every round 1.01 to
# 1.06, python bench/cpu_batch.py --rounds 8 --images 256, bench/results/cpu/batch-xeon-amx/); the indexer 1.02x
# and 1.05x at 16 in two runs of bench/throughput.py (xeon-amx-batch-resize-768/, -run2/). On the 2-core EPYC
# 32 was fastest, 16 at 0.98x and 0.99x (bench/results/cpu/batch-epyc/, batch-epyc-packed/: before the rotary
# rewrite). Half the memory.
CPU_BATCH = 16
PROBE_LARGEST = 128  # the H100 7B optimum at 224 (bench/results/gpu); larger batches add memory, not speed
# ... and at most this many tokens a batch: 128 images at 224 px. At 512 px (1,029 tokens an image) the 7B's
# forward is as fast at 8 as at 32 and the indexer ran 0.96 x forward-only at 16 against 0.90 x at 128
# (bench/results/gpu/h200-2026-11-30): a larger batch only makes the pipeline's start and finish longer.
PROBE_TOKENS = 128 * 201
PROBE_MEMORY_SHARE = 0.8  # headroom for the decode pipeline's pinned buffers and fragmentation
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class Embedding:
    global_vectors: torch.Tensor  # (B, D') float32, L2-normalised
    patch_tokens: torch.Tensor  # (B, h, w, D) float32, on the model's device


class Embedder(Protocol):
    preprocess: Preprocess
    provenance: dict

    def embed(self, pixels: torch.Tensor, *, check: bool = True) -> Embedding: ...


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """Native bfloat16 arithmetic: AMX or AVX512-BF16, as torch detects them (the rewrites ask the same)."""
    return amx_available() or avx512_bf16_available()


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: float16 on CUDA (as the model card says), bfloat16 on CPUs with native support, else float32."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return DTYPES[dtype]


def weights_fingerprint(model_dir: Path) -> str | None:
    """sha256 over the safetensors files of a local model directory, in name order."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def load_backbone(model: str, *, dtype: torch.dtype, device: torch.device):
    """transformers' own loading path, safetensors only, no remote code."""
    from safetensors import SafetensorError
    from transformers import AutoModel  # only the indexer imports transformers

    check_model_name(model)
    try:
        backbone = AutoModel.from_pretrained(
            model, dtype=dtype, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError, SafetensorError) as error:  # the last: a weights file cut short or damaged
        raise ModelUnavailable(_load_failure(model, error)) from error
    if getattr(backbone.config, "model_type", None) != "dinov3_vit":
        raise ModelUnavailable(f"model {model!r} is a {backbone.config.model_type}, not a DINOv3 ViT")
    return tune_for_device(backbone.to(device).eval())


def _load_failure(model: str, error: Exception) -> str:
    """Why a model did not load, and what to do: a local folder is not a model (or is damaged); a Hub id may
    want a machine with internet."""
    said = f"cannot load model {model!r} ({(str(error).splitlines() or [type(error).__name__])[0]})"
    if Path(model).expanduser().is_dir():
        return (f"{said}. The folder {model} is not a complete Hugging Face model folder, or a file in it is damaged: "
                "it needs config.json and model.safetensors as `hf download MODEL --local-dir DIR` leaves them")
    return (f"{said}. If this machine is offline, download it elsewhere (`hf download MODEL --local-dir DIR`, keeping "
            "the model name in DIR), copy DIR here and pass --model DIR or set LOOKALIKE_MODEL=DIR")


def check_model_name(model: str) -> None:
    """ModelUnavailable for a name written as a local path (absolute, ./ ../ ~, or more parts than a Hub id's
    owner/name) where nothing is, before anything is loaded or chosen by the name."""
    as_path = model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model
    if as_path and not Path(model).expanduser().exists():
        raise ModelUnavailable(f"cannot load model {model!r}: no model folder at {model} (it does not exist); pass "
                               "--model DIR (or set LOOKALIKE_MODEL=DIR) with DIR the downloaded model, or a Hub id "
                               f"such as {DEFAULT_MODEL}")


@contextmanager
def quiet_loading(quiet: bool = True):
    """No progress bars while a model loads in this block (transformers' "Loading weights", the Hub's downloads),
    when `quiet`: for `--no-progress` and `--json`, whose stderr a script may keep. The bars are as they were
    after it (a notebook or test session that runs the CLI in-process keeps its own). HF_HUB_DISABLE_PROGRESS_BARS,
    where set, decides for both, as it does anyway: changing them then would only warn."""
    if not quiet or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    had_bar, hub_quiet = transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()  # the Hub's too
    disable_progress_bars()
    try:
        yield
    finally:
        if had_bar:
            transformers_logging.enable_progress_bar()  # and the Hub's
        if hub_quiet:
            disable_progress_bars()
        else:
            enable_progress_bars()


def tune_for_device(backbone):
    """What loading does to a backbone for speed: on an AMX CPU in 16-bit floats, padded attention keys, and in
    bfloat16 on one with AVX512-BF16 but no AMX, attention as split products (indexer/attention.py); on both in
    bfloat16 and in float32 on an x86-64 CPU with AVX2 or better, rewritten layers (indexer/cpu_fusion.py);
    elsewhere nothing. Benchmarks call it too."""
    return fuse_for_cpu(use_cpu_attention(backbone))


class DinoV3Embedder:
    """A DINOv3 ViT from transformers, with the preprocessing and provenance that go with it."""

    def __init__(self, backbone, *, model: str, resolution: int = 224, normalization: dict, pooling: str = "cls",
                 fingerprint: str | None = None, compile: bool = False):
        config = backbone.config
        if resolution % config.patch_size:
            raise IndexerError(f"--resolution {resolution} is not a multiple of the patch size {config.patch_size}")
        if pooling not in POOLINGS:
            raise IndexerError(f"--pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.backbone = backbone
        # torch.compile fuses the elementwise work between the matrix products: measured +28 % images/s
        # for the 7B on an H100 (bench/results/gpu), after a ~50 s compile per input shape.
        # On a CPU, freezing also folds the weights into the graph (oneDNN prepacks them).
        options = {"freezing": True} if next(backbone.parameters()).device.type == "cpu" else None
        if compile:  # inductor packs weights itself when it freezes them, and cannot trace oneDNN's packed ones
            unpack_weights(backbone)
        self._forward = torch.compile(backbone, dynamic=False, options=options) if compile else backbone
        self._static_batch = None  # a compiled forward keeps one batch size: smaller batches are padded
        self.compiled = compile
        self.device = next(backbone.parameters()).device
        # a query's one image on a GPU, replayed from a CUDA graph (not with --compile, which has its own graphs)
        self.one_image = OneImageGraphs(backbone) if self.device.type == "cuda" and not compile else None
        self.dtype = next(backbone.parameters()).dtype
        self.pooling = pooling
        self.patch_size = config.patch_size
        self.num_prefix_tokens = 1 + config.num_register_tokens  # [CLS, registers..., patches...]
        self.preprocess = Preprocess(resolution, tuple(normalization["mean"]), tuple(normalization["std"]))
        dim = config.hidden_size * (2 if pooling == "cls+mean" else 1)
        self.provenance = {
            "model": model,
            "fingerprint": fingerprint,
            "backbone": type(backbone).__name__,
            "dtype": str(self.dtype).removeprefix("torch."),
            "resolution": resolution,
            "normalization": normalization,
            "pooling": pooling,
            "dim": dim,
            "hidden_size": config.hidden_size,
            "patch_size": config.patch_size,
            "num_register_tokens": config.num_register_tokens,
        }

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, dtype: str = "auto", device: str = "auto",
                        resolution: int = 224, normalization: str | dict | None = None, pooling: str = "cls",
                        compile: bool = False):
        if Path(model).expanduser().is_dir():  # ~ too, for a name quoted past the shell or read from a file
            model = str(Path(model).expanduser().absolute())  # a store must find its model from any directory
        torch_device = resolve_device(device)
        backbone = load_backbone(model, dtype=resolve_dtype(dtype, torch_device), device=torch_device)
        fingerprint = getattr(backbone.config, "_commit_hash", None)
        fingerprint = f"revision:{fingerprint}" if fingerprint else None
        if Path(model).is_dir():
            fingerprint = weights_fingerprint(Path(model)) or fingerprint
        return cls(backbone, model=model, resolution=resolution, pooling=pooling, fingerprint=fingerprint,
                   normalization=normalization_for(model, normalization), compile=compile)

    def probe_batch_size(self, *, largest: int = PROBE_LARGEST, memory_share: float = PROBE_MEMORY_SHARE) -> int:
        """The batch size for `--batch-size auto`: on a GPU the largest power of two (up to `largest`, and up to
        PROBE_TOKENS tokens) whose forward on blank input peaks under `memory_share` of the device's memory;
        CPU_BATCH elsewhere. An out-of-memory error later in the run still halves the batch."""
        if self.device.type != "cuda":
            return CPU_BATCH
        side = self.preprocess.resolution
        largest = min(largest, token_cap(self.num_prefix_tokens + (side // self.patch_size) ** 2))
        total = torch.cuda.get_device_properties(self.device).total_memory

        def fits(size: int) -> bool:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                with torch.inference_mode():  # the eager backbone: a compiled one would compile per size
                    self.backbone(pixel_values=torch.zeros(size, 3, side, side, device=self.device, dtype=self.dtype))
                torch.cuda.synchronize(self.device)
            except torch.OutOfMemoryError:
                return False
            finally:
                torch.cuda.empty_cache()
            return torch.cuda.max_memory_allocated(self.device) <= memory_share * total

        size = largest_fitting(fits, largest=largest)
        log.info("--batch-size auto: %d (probed on %s at %d px)", size, self.device, side)
        return size

    def _run(self, pixels: torch.Tensor, *, graphed: bool = False) -> torch.Tensor:
        if not self.compiled:
            if graphed and self.one_image is not None and len(pixels) == 1:
                return self.one_image(pixels)
            return self._forward(pixel_values=pixels).last_hidden_state
        self._static_batch = self._static_batch or len(pixels)
        try:
            if len(pixels) < self._static_batch:  # the run's last, short batch: no second compile
                return _padded_forward(self._forward, pixels, self._static_batch)
            return self._forward(pixel_values=pixels).last_hidden_state
        except torch.OutOfMemoryError:
            self._static_batch = None  # the caller retries smaller: compile for that size instead
            raise

    # The decode workers hand over uint8 pixels (Preprocess.resized) and embed() normalises them on the model's
    # device: a quarter of the host memory in flight (worker queues, pinned buffers) and of the copies. On the
    # 2-core VM, against float32 normalised in the workers: ViT-S/16 1.03x, tiny model 1.19x (the hand-over
    # dominates there; bench/results/cpu/variants/); bench/throughput.py --variants times both on any machine.
    takes_uint8 = True

    @torch.inference_mode()
    def embed(self, pixels: torch.Tensor, *, check: bool = True) -> Embedding:
        """pixels (B, 3, H, W), normalised float or Preprocess.resized uint8 → global vectors and the
        (H/16, W/16) grid of patch tokens.

        `check=False` leaves the NaN/inf check to the caller (the pipeline's writer does it on the host
        copy), so that on a GPU this call returns before the device has finished. Checked calls are queries:
        on a GPU their one image runs from a CUDA graph (indexer/graphs.py); the pipeline's never do (its last,
        short batch or an out-of-memory retry may be one image, not worth a capture).
        """
        batch, _, height, width = pixels.shape
        if pixels.dtype == torch.uint8:  # Preprocess.resized: normalised here, on the device
            pixels = self.preprocess.normalize(pixels.to(self.device, non_blocking=True), dtype=self.dtype)
        pixels = pixels.to(self.device, dtype=self.dtype, non_blocking=True)
        hidden = self._run(pixels, graphed=check)  # (B, 1 + R + h*w, D), after the final norm
        cls_token = hidden[:, 0].float()  # == pooler_output
        patches = hidden[:, self.num_prefix_tokens:].float()  # (B, h*w, D)
        grid = patches.reshape(batch, height // self.patch_size, width // self.patch_size, -1)  # (B, h, w, D)
        if check and not (torch.isfinite(cls_token).all() and torch.isfinite(patches).all()):
            raise NonFiniteOutput(
                f"the backbone produced NaN/inf in {self.provenance['dtype']} (an overflow): this batch was "
                "refused and nothing was written. Run again with --dtype bfloat16 (or --dtype float32)"
            )
        return Embedding(global_vectors=pool(cls_token, patches, self.pooling), patch_tokens=grid)


def largest_fitting(fits, *, largest: int) -> int:
    """The largest power of two up to `largest` for which fits(size) holds, trying 1, 2, 4, ... (at least 1)."""
    best, size = 1, 1
    while size <= largest and fits(size):
        best, size = size, size * 2
    return best


def token_cap(tokens_per_image: int) -> int:
    """The largest power of two of images whose tokens fit in PROBE_TOKENS (at least 1)."""
    return 1 << max(0, (PROBE_TOKENS // tokens_per_image).bit_length() - 1)


def _padded_forward(forward, pixels: torch.Tensor, size: int) -> torch.Tensor:
    padding = pixels.new_zeros((size - len(pixels), *pixels.shape[1:]))
    return forward(pixel_values=torch.cat([pixels, padding])).last_hidden_state[: len(pixels)]


def pool(cls_token: torch.Tensor, patches: torch.Tensor, pooling: str) -> torch.Tensor:
    normalize = torch.nn.functional.normalize
    if pooling == "cls":
        return normalize(cls_token, dim=-1)
    mean = patches.mean(dim=1)
    if pooling == "mean":
        return normalize(mean, dim=-1)
    return normalize(torch.cat([normalize(cls_token, dim=-1), normalize(mean, dim=-1)], dim=-1), dim=-1)


def fit_pca(tokens: torch.Tensor, *, components: int = 64, max_tokens: int = 20000, seed: int = 0):
    """Top principal directions of patch tokens (N, D) → (mean (D,), components (C, D)) as numpy."""
    generator = torch.Generator().manual_seed(seed)
    if len(tokens) > max_tokens:
        tokens = tokens[torch.randperm(len(tokens), generator=generator)[:max_tokens].to(tokens.device)]
    tokens = tokens.float()
    mean = tokens.mean(dim=0)
    count = min(components, tokens.shape[1], max(len(tokens) - 1, 1))
    torch.manual_seed(seed)  # svd_lowrank draws a random projection
    _, _, v = torch.svd_lowrank(tokens - mean, q=min(count + 8, min(tokens.shape)), niter=4)
    return mean.cpu().numpy(), v[:, :count].T.contiguous().cpu().numpy(), len(tokens)
