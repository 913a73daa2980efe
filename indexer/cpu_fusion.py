"""The backbone's layers rewritten for a 16-bit forward on a CPU: the same arithmetic, fewer passes over memory."""
import torch
import torch.nn.functional as F
from torch import nn

from . import attention

# transformers' activation name → (oneDNN post-op, its algorithm, the same in eager PyTorch)
ACTIVATIONS = {"gelu": ("gelu", "none", F.gelu), "silu": ("swish", "", F.silu)}
PARTS = ("layer_scale", "activation")

# In bfloat16 on the 2-core Xeon the ViT-S/16 forward spent 40 % of its time outside the matrix products and the
# attention kernel, each operator a full pass over memory; the exact GELU alone 7.8 %, the multiplies (the layer
# scales' among them) 7.1 %. Two rewrites remove such passes, computing the same thing:
# - layer scales are folded into the weights of the projection before them (W' = diag(γ)·W, b' = γ·b);
# - the MLP's activation runs as a post-op of its first projection, on oneDNN's float32 accumulator.
# The whole forward: 1.19x at batch 32 (python bench/cpu_fusion.py --rounds 12, bench/results/cpu/fusion/). RoPE
# rotated in place was tried too and gave nothing measurable, so it is not here.
# Where: 16-bit floats on a CPU with AMX (above), and bfloat16 on one with AVX512-BF16 but no AMX: 1.11x on a 2-core
# AMD EPYC (bench/results/cpu/fusion-epyc/). Not float32, the dtype of CPUs without either: 1.08x on that EPYC and
# 1.03x with oneDNN, MKL and PyTorch's kernels held to AVX2, rounds from 0.89 to 1.21 (fusion-epyc-float32/,
# fusion-epyc-float32-avx2/): too small and uneven to change layers on CPUs that were not measured.


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


def rewrites_apply(backbone) -> bool:
    """Whether the rewrites were measured faster for this backbone's device and dtype (see above)."""
    weights = next(backbone.parameters())
    if weights.device.type != "cpu" or weights.dtype not in (torch.bfloat16, torch.float16):
        return False
    if weights.dtype == torch.float16:  # oneDNN refuses the fused op in float16 where the CPU lacks it
        return attention.amx_available() and onednn_float16_available()
    return attention.amx_available() or avx512_bf16_available()


def avx512_bf16_available() -> bool:
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def onednn_float16_available() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def fuse_for_cpu(backbone, *, parts: tuple[str, ...] = PARTS, anywhere: bool = False):
    """Rewrite a DINOv3 backbone in place where rewrites_apply (others are returned untouched); `parts` picks the
    rewrites and `anywhere` skips that check, for benchmarks. What was done is kept in backbone.lookalike_fused."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown fusion parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    layers = getattr(getattr(backbone, "model", None), "layer", None)  # DINOv3ViTModel's encoder layers
    if layers is None or getattr(backbone, "lookalike_fused", None) is not None:
        return backbone
    if not (anywhere or rewrites_apply(backbone)):
        return backbone
    done = set()
    with torch.no_grad():
        for layer in layers:
            if "layer_scale" in parts and _fold_layer_scales(layer):
                done.add("layer_scale")
            if "activation" in parts and _fuse_activation(layer.mlp, backbone.config.hidden_act):
                done.add("activation")
    backbone.lookalike_fused = tuple(part for part in PARTS if part in done)
    return backbone


def _fold_layer_scales(layer) -> bool:
    pairs = ((getattr(layer.attention, "o_proj", None), "layer_scale1"),
             (getattr(layer.mlp, "down_proj", None), "layer_scale2"))
    if not all(isinstance(linear, nn.Linear) and hasattr(getattr(layer, name, None), "lambda1")
               for linear, name in pairs):
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
