"""The backbone's layers rewritten for a 16-bit forward on an AMX CPU: same arithmetic, fewer passes over memory."""
import types

import torch
import torch.nn.functional as F
from torch import nn

from .attention import on_amx_16bit

# transformers' activation name → (oneDNN post-op, its algorithm, the same in eager PyTorch)
ACTIVATIONS = {"gelu": ("gelu", "none", F.gelu), "silu": ("swish", "", F.silu)}
PARTS = ("layer_scale", "activation", "rope")

# On a CPU the ViT-S/16 forward spends about a third of its time outside the matrix products (bf16, 2-core
# Xeon): the exact GELU alone a tenth, the layer scales and RoPE's split / negate / concatenate most of the rest,
# each a full pass over memory. Three rewrites remove those passes without changing what is computed:
# - layer scales are folded into the weights of the projection before them (W' = diag(γ)·W, b' = γ·b);
# - the MLP's activation runs as a post-op of its first projection, on oneDNN's float32 accumulator;
# - RoPE rotates q and k in place, two passes instead of six and no copy of the prefix tokens.
# Measured in bench/cpu_fusion.py (bench/results/cpu/fusion/).


class FusedLinear(nn.Module):
    """A linear layer and the activation after it in one oneDNN call; the weights are the replaced layer's."""

    def __init__(self, linear: nn.Linear, activation: str):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.activation = activation
        self.post_op, self.algorithm, self.eager = ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN's fused op has no backward, and torch.compile fuses the eager pair itself (it cannot lower the
        # op on weights it did not freeze)
        if torch.compiler.is_compiling() or (torch.is_grad_enabled() and self.weight.requires_grad):
            return self.eager(F.linear(x, self.weight, self.bias))
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post_op, [], self.algorithm)

    def extra_repr(self) -> str:
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}, then {self.activation}"


def fuse_for_cpu(backbone, *, parts: tuple[str, ...] = PARTS):
    """Rewrite a 16-bit DINOv3 backbone on an AMX CPU in place (others are returned untouched); `parts` picks the
    rewrites, for benchmarks. What was done is kept in backbone.lookalike_fused."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown fusion parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if not on_amx_16bit(backbone) or getattr(backbone, "lookalike_fused", None) is not None:
        return backbone
    done = set()
    with torch.no_grad():
        for layer in backbone.model.layer:
            if "layer_scale" in parts and _fold_layer_scales(layer):
                done.add("layer_scale")
            if "activation" in parts and _fuse_activation(layer.mlp, backbone.config.hidden_act):
                done.add("activation")
            if "rope" in parts and _rope_in_place(layer.attention):
                done.add("rope")
    backbone.lookalike_fused = tuple(part for part in PARTS if part in done)
    return backbone


def _fold_layer_scales(layer) -> bool:
    pairs = ((layer.attention.o_proj, "layer_scale1"), (layer.mlp.down_proj, "layer_scale2"))
    if not all(hasattr(getattr(layer, name, None), "lambda1") for _, name in pairs):
        return False
    for linear, name in pairs:
        scale = getattr(layer, name).lambda1  # (D,)
        linear.weight.mul_(scale[:, None])  # (D, D_in): output row i scaled by γ_i
        if linear.bias is not None:
            linear.bias.mul_(scale)
        setattr(layer, name, nn.Identity())
    return True


def _fuse_activation(mlp, activation: str) -> bool:
    """DINOv3ViTMLP: down(act(up(x))); DINOv3ViTGatedMLP: down(act(gate(x)) * up(x)). The act is fused into the
    projection it follows and replaced by the identity."""
    first = "gate_proj" if hasattr(mlp, "gate_proj") else "up_proj"
    if activation not in ACTIVATIONS or not isinstance(getattr(mlp, first, None), nn.Linear):
        return False
    setattr(mlp, first, FusedLinear(getattr(mlp, first), activation))
    mlp.act_fn = nn.Identity()
    return True


def _rope_in_place(attention_module) -> bool:
    if not all(hasattr(attention_module, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "num_heads")):
        return False
    attention_module.forward = types.MethodType(_attention_forward, attention_module)
    return True


def _attention_forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
    """DINOv3ViTAttention.forward, with RoPE applied to q and k in place."""
    from transformers.models.dinov3_vit.modeling_dinov3_vit import ALL_ATTENTION_FUNCTIONS, eager_attention_forward

    batch, tokens, _ = hidden_states.shape

    def heads(x):  # (B, N, D) → (B, H, N, d), a view
        return x.view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

    query, key, value = (heads(project(hidden_states)) for project in (self.q_proj, self.k_proj, self.v_proj))
    cos, sin = position_embeddings  # (P, d): one row per patch; CLS and registers are not rotated
    rotate_patches_(query, cos, sin)
    rotate_patches_(key, cos, sin)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
    output, weights = attend(self, query, key, value, attention_mask, scaling=self.scaling,
                             dropout=self.dropout if self.training else 0.0, **kwargs)  # (B, N, H, d)
    return self.o_proj(output.reshape(batch, tokens, -1).contiguous()), weights


def rotate_patches_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """x (B, H, N, d): its last P tokens become x·cos + rotate_half(x)·sin, in place, as transformers' RoPE.

    rotate_half(x)·sin = [-x₂, x₁]·[s₁, s₂] = [x₂, x₁]·[-s₁, s₂]: one swapped copy and one multiply-add."""
    patches = x[:, :, x.shape[2] - cos.shape[-2]:]  # (B, H, P, d), a view
    half = x.shape[-1] // 2
    swapped = torch.cat((patches[..., half:], patches[..., :half]), dim=-1)
    signed_sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    patches.mul_(cos).addcmul_(swapped, signed_sin)
