"""The backbone's layers rewritten for a 16-bit forward on a CPU: the same arithmetic, fewer passes over memory."""
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from . import attention

# transformers' activation name → (oneDNN post-op, its algorithm, the same in eager PyTorch)
ACTIVATIONS = {"gelu": ("gelu", "none", F.gelu), "silu": ("swish", "", F.silu)}
PARTS = ("layer_scale", "activation", "packed_weights", "rotary")
PACKED_ROWS = 16 * 201  # the CPU batch (indexer.embedder.CPU_BATCH) of 224 px images: oneDNN's layout hint
PACKABLE = (torch.bfloat16, torch.float32)

# In bfloat16 on the 2-core Xeon the ViT-S/16 forward spent 40 % of its time outside the matrix products and the
# attention kernel, each operator a full pass over memory; the exact GELU alone 7.8 %, the multiplies (the layer
# scales' among them) 7.1 %. Two rewrites remove such passes, computing the same thing:
# - layer scales are folded into the weights of the projection before them (W' = diag(γ)·W, b' = γ·b);
# - the MLP's activation runs as a post-op of its first projection, on oneDNN's float32 accumulator.
# The whole forward: 1.19x at batch 32 (python bench/cpu_fusion.py --rounds 12, bench/results/cpu/fusion/). RoPE
# rotated in place (on the strided q and k, with a swapped copy) gave nothing measurable; RotaryAttention (below)
# writes the rotated q and k into new contiguous tensors in two passes each, where transformers makes six and
# concatenates: on the Xeon in bfloat16 the forward 1.09x over the three other rewrites (per round 1.00 to 1.28;
# 1.58x against 1.47x over transformers' layers, python bench/cpu_fusion.py --rounds 10,
# bench/results/cpu/fusion-xeon-amx-rotary/), one image unchanged within the noise.
# Where: 16-bit floats on a CPU with AMX (above), and bfloat16 on one with AVX512-BF16 but no AMX: 1.11x on a 2-core
# AMD EPYC (bench/results/cpu/fusion-epyc/). In float32, the dtype of CPUs without either, these two gave 1.08x on
# that EPYC and 1.03x with oneDNN, MKL and PyTorch's kernels held to AVX2, rounds from 0.89 to 1.21
# (fusion-epyc-float32/, fusion-epyc-float32-avx2/): too small and uneven on their own.
# A third saves work inside the products: every linear layer's weights are reordered once, at load, into oneDNN's
# blocked layout (as inductor's freezing does) instead of at every call. On the EPYC the three rewrites gave the
# forward 1.18x at batch 32 and one image 1.14x, against 1.08x and 1.03x without the packing (10 rounds,
# bench/results/cpu/fusion-epyc-packed/); on the AMX Xeon 1.46x and one image 1.10x, the packing 1.05x over the
# other two (fusion-xeon-amx-packed/). In float32 the three gave 1.34x and one image
# 1.23x on the EPYC (8 rounds, fusion-epyc-float32-packed/), 1.08x and 1.10x with the kernels held to AVX2, no
# round slower (fusion-epyc-float32-avx2-packed/): so float32 is rewritten on x86-64 CPUs with AVX2 or better.
# Not float16's weights: oneDNN packs those only on CPUs with float16 arithmetic.


class PackedWeight(nn.Parameter):
    """A weight in oneDNN's blocked layout; unlike a plain Parameter of one, it survives copy.deepcopy."""

    def __deepcopy__(self, memo):
        if id(self) not in memo:
            memo[id(self)] = PackedWeight(self.data.clone(), requires_grad=False)
        return memo[id(self)]


class FusedLinear(nn.Module):
    """A linear layer in one oneDNN call: with the activation after it fused (if any), and its weights in oneDNN's
    own layout once packed. The weights are the replaced layer's."""

    def __init__(self, linear: nn.Linear, activation: str | None = None):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.activation = activation
        self.post_op, self.algorithm, self.eager = ACTIVATIONS[activation] if activation else ("none", "", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN's fused op has no backward, and torch.compile fuses the eager pair itself (it cannot lower the
        # op on weights it did not freeze; the embedder unpacks weights before compiling)
        if (torch.compiler.is_compiling() or x.device.type != "cpu"
                or (torch.is_grad_enabled() and self.weight.requires_grad)):
            product = F.linear(x, self.weight, self.bias)
            return self.eager(product) if self.eager else product
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post_op, [], self.algorithm)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """The matrix product alone, on the weights as they are (benchmarks time it)."""
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def pack(self, rows: int) -> None:
        """Reorder the weights into oneDNN's layout for inputs of about `rows` rows (any row count still works)."""
        packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), rows)
        self.weight = PackedWeight(packed, requires_grad=False)

    def unpack(self) -> None:
        if self.weight.is_mkldnn:
            self.weight = nn.Parameter(self.weight.to_dense(), requires_grad=False)

    def _apply(self, fn, recurse=True):
        """A cast or a move (.float(), .to(...)) works on PyTorch's layout: unpack, apply, and pack again where
        packed weights can live (on the CPU, in bfloat16 or float32)."""
        packed = self.weight.is_mkldnn
        self.unpack()
        super()._apply(fn, recurse)
        if packed and self.weight.device.type == "cpu" and self.weight.dtype in PACKABLE:
            self.pack(PACKED_ROWS)
        return self

    def extra_repr(self) -> str:
        then = f", then {self.activation}" if self.activation else ""
        packed = ", packed" if self.weight.is_mkldnn else ""
        return f"in_features={self.weight.shape[1]}, out_features={self.weight.shape[0]}{then}{packed}"


def rewrites_apply(backbone) -> bool:
    """Whether the rewrites were measured faster for this backbone's device and dtype (see above)."""
    weights = next(backbone.parameters())
    if weights.device.type != "cpu":
        return False
    if weights.dtype == torch.float32:
        return avx2_or_better()
    if weights.dtype == torch.float16:  # oneDNN refuses the fused op in float16 where the CPU lacks it
        return attention.amx_available() and onednn_float16_available()
    return weights.dtype == torch.bfloat16 and (attention.amx_available() or attention.avx512_bf16_available())


def avx2_or_better() -> bool:
    """An x86-64 CPU whose vector units PyTorch uses at AVX2 or AVX-512 width (ATEN_CPU_CAPABILITY can hold it)."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


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
            if "packed_weights" in parts and _pack_weights(layer):
                done.add("packed_weights")
            if "rotary" in parts and type(layer.attention) is _dinov3().DINOv3ViTAttention:
                layer.attention.__class__ = _rotary_attention()  # the same module and weights, another forward
                done.add("rotary")
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


def _pack_weights(layer) -> bool:
    """Every linear layer of the attention and the MLP as a FusedLinear with packed weights (bfloat16, float32)."""
    linears = [(parent, name, child) for parent in (layer.attention, layer.mlp)
               for name, child in parent.named_children() if isinstance(child, (nn.Linear, FusedLinear))]
    if not linears or linears[0][2].weight.dtype not in PACKABLE:
        return False
    for parent, name, child in linears:
        fused = child if isinstance(child, FusedLinear) else FusedLinear(child)
        fused.pack(PACKED_ROWS)
        setattr(parent, name, fused)
    return True


def unpack_weights(backbone):
    """Packed weights back in PyTorch's layout (torch.compile cannot trace oneDNN's), and the record updated."""
    for module in backbone.modules():
        if isinstance(module, FusedLinear):
            module.unpack()
    if "packed_weights" in getattr(backbone, "lookalike_fused", ()):
        backbone.lookalike_fused = tuple(part for part in backbone.lookalike_fused if part != "packed_weights")
    return backbone


def __getattr__(name: str):
    """cpu_fusion.RotaryAttention, made at first use: importing this module must not import transformers' models
    (the command line's start, the GPU check's import list)."""
    if name == "RotaryAttention":
        return _rotary_attention()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dinov3():
    from transformers.models.dinov3_vit import modeling_dinov3_vit

    return modeling_dinov3_vit


@lru_cache(maxsize=1)
def _rotary_attention():
    dinov3 = _dinov3()

    class RotaryAttention(dinov3.DINOv3ViTAttention):
        """transformers' DINOv3 attention, its rotary embedding computed by `rotate`; transformers' own forward where
        that does not apply (autograd, torch.compile, off the CPU, angles not tiled as DINOv3 tiles them)."""

        def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
            cos, sin = position_embeddings
            if (torch.is_grad_enabled() or torch.compiler.is_compiling() or hidden_states.device.type != "cpu"
                    or not _tiled(cos, sin, hidden_states.dtype)):
                return super().forward(hidden_states, attention_mask, position_embeddings, **kwargs)
            batch, tokens, _ = hidden_states.shape

            def heads(projection):  # (B, N, D) → (B, H, N, d), a view
                return projection(hidden_states).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)

            query, key = (rotate(heads(projection), cos, sin) for projection in (self.q_proj, self.k_proj))
            value = heads(self.v_proj)
            attend = dinov3.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                  dinov3.eager_attention_forward)
            output, weights = attend(self, query, key, value, attention_mask, scaling=self.scaling,
                                     dropout=self.dropout if self.training else 0.0, **kwargs)  # (B, N, H, d)
            return self.o_proj(output.reshape(batch, tokens, -1).contiguous()), weights

    RotaryAttention.__module__, RotaryAttention.__qualname__ = __name__, "RotaryAttention"  # pickled by name
    return RotaryAttention


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, d), any strides → a new contiguous tensor: its last P tokens rotated as transformers'
    apply_rotary_pos_emb rotates them (x·cos + rotate_half(x)·sin, cos and sin (P, d)), the prefix tokens (CLS,
    registers) copied. With each half of the angles the same (_tiled) that is, per half x₁, x₂ and their c, s:
    x₁·c - x₂·s and x₂·c + x₁·s, two passes over x where transformers makes six, and no concatenation."""
    half, prefix = x.shape[-1] // 2, x.shape[-2] - cos.shape[-2]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out[..., :prefix, :] = x[..., :prefix, :]
    x1, x2 = x[..., prefix:, :half], x[..., prefix:, half:]
    c, s = cos[..., :half], sin[..., :half]
    torch.mul(x1, c, out=out[..., prefix:, :half]).addcmul_(x2, s, value=-1)
    torch.mul(x2, c, out=out[..., prefix:, half:]).addcmul_(x1, s)
    return out


def _tiled(cos: torch.Tensor, sin: torch.Tensor, dtype) -> bool:
    """DINOv3's angles repeat once along the last dimension (angles.tile(2)); rotate relies on it."""
    half = cos.shape[-1] // 2
    return (cos.dtype == sin.dtype == dtype and cos.shape[-1] % 2 == 0
            and torch.equal(cos[..., :half], cos[..., half:]) and torch.equal(sin[..., :half], sin[..., half:]))
