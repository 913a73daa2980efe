"""The backbone's attention on a CPU: padded keys where AMX runs PyTorch's flash kernel, split products elsewhere.

At 224 px a DINOv3 sequence is 201 tokens (CLS, 4 registers, 196 patches). In bfloat16 on a CPU with AMX, PyTorch's
flash-attention kernel runs that key length slower than a multiple of 16: appending zero keys and values,
masked to -inf so that no query attends to them, gives the same output (to bfloat16 rounding) 1.3-2.8x faster
and the whole ViT-S/16 forward 1.10-1.36x (bench/cpu_attention.py, bench/results/cpu/attention/). Not everywhere:
with oneDNN held below AMX, attention alone measured 0.77-1.09x and the forward 0.99x; at 405, 581 and 1029 keys
(320, 384, 512 px) 0.78-1.20x. So only short sequences in 16-bit floats on AMX are padded.
In bfloat16 on a CPU with AVX512-BF16 but no AMX (an AMD EPYC), the flash kernel itself is the slow part: there the
attention runs as its three steps, QKᵀ, softmax and the product with V, each one oneDNN or ATen call, over slices
of the batch whose scores stay in cache, in one buffer that the softmax overwrites (split_attention; figures in
bench/results/cpu/attention-epyc-split/).
CUDA kernels, float32 and other CPUs keep transformers' "sdpa".
"""
from functools import lru_cache

import torch
import torch.nn.functional as F

NAME = "lookalike_cpu_sdpa"
SPLIT_NAME = "lookalike_cpu_split"
KEY_MULTIPLE = 16
LONGEST_PADDED = 300  # keys: faster at 201 and 261 (224, 256 px); mixed or slower at 405, 581, 1029 (789: faster)
SCORE_BYTES = 4 << 20  # one slice's scores: 8 images of 6 heads × 201² keys in bfloat16 (all at once: slower)


def padded_key_attention(module, query, key, value, attention_mask, *, scaling=None, dropout: float = 0.0,
                         **kwargs):
    """transformers' attention-function signature: (B, H, N, d) query, key, value → ((B, N, H, d), None)."""
    keys = key.shape[2]
    pad = -keys % KEY_MULTIPLE
    if pad and attention_mask is None and keys <= LONGEST_PADDED:
        key = F.pad(key, (0, 0, 0, pad))  # (B, H, N + pad, d)
        value = F.pad(value, (0, 0, 0, pad))
        attention_mask = _key_mask(keys, pad, query.dtype, query.device)
    return _sdpa(query, key, value, attention_mask, scaling=scaling, dropout=dropout)


def _sdpa(query, key, value, attention_mask, *, scaling, dropout: float):
    """PyTorch's SDPA as transformers' "sdpa" calls it: (B, H, N, d) in, ((B, N, H, d), None) out."""
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                            scale=scaling)  # (B, H, N, d)
    return output.transpose(1, 2).contiguous(), None


def split_attention(module, query, key, value, attention_mask, *, scaling=None, dropout: float = 0.0, **kwargs):
    """The same signature and result as padded_key_attention, computed as softmax(q·kᵀ·scale)·v a slice of the batch
    at a time; a mask, dropout or gradients (none of which DINOv3 needs at inference; out= has no backward) take
    PyTorch's kernel instead, as does torch.compile (split is measured eager; --compile was measured on SDPA)."""
    if (attention_mask is not None or dropout or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and query.requires_grad)):
        return _sdpa(query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    batch, heads, queries, width = query.shape
    scale = width ** -0.5 if scaling is None else scaling
    step = min(batch, max(1, SCORE_BYTES // (heads * queries * key.shape[2] * query.element_size())))
    output = query.new_empty(batch, queries, heads, width)  # (B, N, H, d)
    buffer = query.new_empty(step, heads, queries, key.shape[2])  # (b, H, N, N): one for every slice
    for start in range(0, batch, step):
        part = slice(start, start + step)
        scores = buffer[:min(step, batch - start)]  # the last slice may be shorter
        torch.matmul(query[part], key[part].transpose(-1, -2), out=scores).mul_(scale)
        torch.softmax(scores, dim=-1, out=scores)  # row by row, so in place is safe (tests compare with sdpa)
        output[part] = torch.matmul(scores, value[part]).transpose(1, 2)
    return output, None


FUNCTIONS = {NAME: padded_key_attention, SPLIT_NAME: split_attention}  # as registered with transformers


@lru_cache(maxsize=8)
def _key_mask(keys: int, pad: int, dtype, device) -> torch.Tensor:
    """0 over the real keys, -inf over the padding; made once per shape, not in every layer (only read; made
    outside inference mode so that a later forward with autograd may use it too)."""
    with torch.inference_mode(False):
        mask = torch.zeros(1, keys + pad, dtype=dtype, device=device)  # (1, N + pad)
        mask[:, keys:] = float("-inf")
    return mask


def amx_available() -> bool:
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def avx512_bf16_available() -> bool:
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def on_amx_16bit(backbone) -> bool:
    weights = next(backbone.parameters())
    return weights.device.type == "cpu" and weights.dtype in (torch.bfloat16, torch.float16) and amx_available()


def cpu_attention_for(backbone) -> str | None:
    """The attention measured fastest for this backbone's device, dtype and CPU, or None for transformers' own."""
    weights = next(backbone.parameters())
    if weights.device.type != "cpu":
        return None
    if on_amx_16bit(backbone):
        return NAME
    return SPLIT_NAME if weights.dtype == torch.bfloat16 and avx512_bf16_available() else None


def use_cpu_attention(backbone):
    """Switch a backbone loaded with transformers' SDPA to cpu_attention_for's pick, if any; others stay as they are."""
    from transformers import AttentionInterface

    chosen = cpu_attention_for(backbone)
    if chosen and getattr(backbone.config, "_attn_implementation", None) == "sdpa":
        for name, function in FUNCTIONS.items():
            AttentionInterface.register(name, function)
        backbone.set_attn_implementation(chosen)
    return backbone
