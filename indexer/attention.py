"""The backbone's attention on an AMX CPU: keys padded to a multiple of 16, where PyTorch's flash kernel is faster so.

At 224 px a DINOv3 sequence is 201 tokens (CLS, 4 registers, 196 patches). In bfloat16 on a CPU with AMX, PyTorch's
flash-attention kernel runs that key length slower than a multiple of 16: appending zero keys and values,
masked to -inf so that no query attends to them, gives the same output (to bfloat16 rounding) 1.3-2.8x faster
and the whole ViT-S/16 forward 1.10-1.36x (bench/cpu_attention.py, bench/results/cpu/attention/). Not everywhere:
with oneDNN held below AMX, attention alone measured 0.77-1.09x and the forward 0.99x; at 405, 581 and 1029 keys
(320, 384, 512 px) 0.78-1.20x. So only short sequences in 16-bit floats on AMX are padded; CUDA kernels and
other CPUs keep transformers' "sdpa".
"""
from functools import lru_cache

import torch
import torch.nn.functional as F

NAME = "lookalike_cpu_sdpa"
KEY_MULTIPLE = 16
LONGEST_PADDED = 300  # keys: faster at 201 and 261 (224, 256 px); mixed or slower at 405, 581, 1029 (789: faster)


def padded_key_attention(module, query, key, value, attention_mask, *, scaling=None, dropout: float = 0.0,
                         **kwargs):
    """transformers' attention-function signature: (B, H, N, d) query, key, value → ((B, N, H, d), None)."""
    keys = key.shape[2]
    pad = -keys % KEY_MULTIPLE
    if pad and attention_mask is None and keys <= LONGEST_PADDED:
        key = F.pad(key, (0, 0, 0, pad))  # (B, H, N + pad, d)
        value = F.pad(value, (0, 0, 0, pad))
        attention_mask = _key_mask(keys, pad, query.dtype, query.device)
    output = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                            scale=scaling)  # (B, H, N, d)
    return output.transpose(1, 2).contiguous(), None


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


def on_amx_16bit(backbone) -> bool:
    weights = next(backbone.parameters())
    return weights.device.type == "cpu" and weights.dtype in (torch.bfloat16, torch.float16) and amx_available()


def use_padded_keys(backbone):
    """Switch a 16-bit backbone on an AMX CPU from transformers' SDPA to padded keys; others stay as they are."""
    from transformers import AttentionInterface

    if on_amx_16bit(backbone) and getattr(backbone.config, "_attn_implementation", None) == "sdpa":
        AttentionInterface.register(NAME, padded_key_attention)
        backbone.set_attn_implementation(NAME)
    return backbone
