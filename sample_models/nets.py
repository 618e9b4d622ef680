"""The small torch networks that ``build.py`` trains on the 16x16 digits (build time only; needs torch).

Every network takes ``input`` float32 [N, 1, 16, 16] and returns logits [N, 10]. They are written so
that the legacy TorchScript ONNX exporter (opset 17) gives the graphs the quantizer tests need:
reshapes use a fixed token count and -1 for the batch, so the batch dimension stays dynamic without
Shape/Gather chains; heads apply nn.Linear to 2-D tensors, so they export as Gemm.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_CLASSES = 10


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """Conv (no bias: BatchNorm supplies the shift) followed by BatchNorm."""
    pad = kernel // 2
    return [nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


# --- ResNet ------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers with an identity or 1x1-projection shortcut, added before the last ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), nn.ReLU(), *conv_bn(c_out, c_out, 3))
        needs_projection = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*conv_bn(c_in, c_out, 1, stride)) if needs_projection else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class ResNetDigits(nn.Module):
    """Stem conv, MaxPool, two residual blocks (one identity, one projection), GlobalAveragePool, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2))  # 16x16 -> 8x8
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2))  # 8x8 -> 4x4
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.head(torch.flatten(x, 1))


class WideResNetDigits(nn.Module):
    """The demo model: stem Conv 1->64, two 64-channel residual blocks at 16x16, one 128-channel projection
    block at 8x8, GlobalAveragePool, Gemm (380,106 parameters). No MaxPool: the blocks run at full resolution,
    about 53 million multiply-adds per image, enough work for int8 kernels to pay off on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 64, 3), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(64, 64, 1), BasicBlock(64, 64, 1), BasicBlock(64, 128, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(128, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.blocks(self.stem(x)))
        return self.head(torch.flatten(x, 1))


# --- MobileNetV2 -------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise (groups = channels), 1x1 linear project; residual Add when shapes match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.body = nn.Sequential(
            *conv_bn(c_in, hidden, 1),
            nn.ReLU6(),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU6(),
            *conv_bn(hidden, c_out, 1),  # linear bottleneck: no activation after the projection
        )
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2Digits(nn.Module):
    """MobileNetV2 in miniature: stem, five inverted residual blocks (two with Adds), 1x1 conv, GAP, Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, expand=4),  # residual
            InvertedResidual(16, 24, 2, expand=4),  # 16x16 -> 8x8
            InvertedResidual(24, 24, 1, expand=4),  # residual
            InvertedResidual(24, 32, 2, expand=4),  # 8x8 -> 4x4
            InvertedResidual(32, 32, 1, expand=4),  # residual
        )
        self.last = nn.Sequential(*conv_bn(32, 64, 1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(64, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.last(self.blocks(self.stem(x))))
        return self.head(torch.flatten(x, 1))


# --- Transformer -------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention from MatMul and Softmax (no fused op), with separate q, k, v projections."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.tokens = heads, dim // heads, tokens
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = self.head_dim**-0.5

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [N, T, D] -> [N, H, T, Dh]
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.scale, dim=-1)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(-1, self.tokens, self.heads * self.head_dim)
        return self.out(y)


class EncoderLayer(nn.Module):
    """Pre-norm encoder layer: x + Attn(LN(x)), then x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, tokens)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TransformerDigits(nn.Module):
    """4x4 patches (Conv, stride 4) -> 16 tokens + learned positions -> encoder layers -> mean -> Gemm."""

    def __init__(self, dim: int = 48, heads: int = 4, layers: int = 2, mlp_dim: int = 96) -> None:
        super().__init__()
        self.dim, self.tokens = dim, 16
        self.patch = nn.Conv2d(1, dim, kernel_size=4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, dim) * 0.02)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, self.tokens, mlp_dim) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).reshape(-1, self.dim, self.tokens).transpose(1, 2) + self.pos
        x = self.norm(self.layers(x)).mean(dim=1)
        return self.head(x)


# --- MLP ---------------------------------------------------------------------------------------


class MlpDigits(nn.Module):
    """Flatten inside the graph, then three Gemm layers with ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
