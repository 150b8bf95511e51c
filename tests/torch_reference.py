"""PyTorch reference of the course networks, for the cross-checks in test_ddpm_networks.py.

A transcription, in plain PyTorch, of the networks the Flax ones in
`ddpm/networks.py` reproduce:

  SimpleUNet        the CIFAR-10 course notebook's DDPM U-Net (7,719,747 parameters)
  UNet              the Radboud MNIST DDPM U-Net, UNet(c_in=1, c_out=1, width=16)
                    (milesial Pytorch-UNet + dome272 Diffusion-Models-pytorch style)
  UNetConditional   its class-conditional variant (label embeddings added with the
                    time encodings)

Copied verbatim (4-space indentation kept, so it diffs cleanly against its
source) from the project's PyTorch peer benchmark, `torch_peer.py` sections (a)
and (b), which lives outside this repository; the tests need only these
classes and torch, so they run in any clone with the [torch] extra. It imports
nothing from this project: it is the independent side of the comparison.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------
# (a) SimpleUNet (CIFAR-10 course notebook)
# --------------------------------------------------------------------------------------


class SinusoidalTimeEmbedding(nn.Module):
    """emb(t) = [sin(t * f_k), cos(t * f_k)], f_k = exp(-ln(max_period) * k / half)."""

    def __init__(self, dim: int = 128, max_period: int = 10000):
        super().__init__()
        self.dim = dim
        self.max_period = max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(self.max_period)
            * torch.arange(half, dtype=torch.float32, device=t.device)
            / half
        )
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResidualBlock(nn.Module):
    """conv3x3 -> GN(8) -> ReLU -> + Linear(relu(temb)) -> conv3x3 -> GN(8) -> Dropout -> ReLU,
    plus residual (1x1 conv when channel counts differ)."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int = 512, groups: int = 8,
                 dropout: float = 0.1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.time_proj = nn.Linear(temb_dim, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.residual = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = h + self.time_proj(F.relu(temb))[:, :, None, None]
        h = F.relu(self.dropout(self.norm2(self.conv2(h))))
        return h + self.residual(x)


class AttentionBlock(nn.Module):
    """GN(8) -> qkv 1x1 conv -> single-head softmax attention over HxW -> proj 1x1 -> residual."""

    def __init__(self, ch: int, groups: int = 8):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.bmm(q.transpose(1, 2), k) / math.sqrt(c), dim=-1)  # (B,HW,HW)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)  # out[:, :, i] = sum_j a_ij v_j
        return x + self.proj(out)


class SimpleUNet(nn.Module):
    N_PARAMS = 7_719_747

    def __init__(self, in_ch: int = 3, base: int = 64, temb_dim: int = 512, tdim: int = 128):
        super().__init__()
        self.time_embed = SinusoidalTimeEmbedding(tdim, 10000)
        self.time_mlp = nn.Sequential(nn.Linear(tdim, temb_dim), nn.ReLU(),
                                      nn.Linear(temb_dim, temb_dim))
        self.init_conv = nn.Conv2d(in_ch, base, 3, padding=1)
        self.down1 = ResidualBlock(base, 2 * base, temb_dim)                    # 64 -> 128 @32
        self.downsample1 = nn.Conv2d(2 * base, 2 * base, 3, stride=2, padding=1)  # @16
        self.down2 = ResidualBlock(2 * base, 4 * base, temb_dim)                # 128 -> 256 @16
        self.downsample2 = nn.Conv2d(4 * base, 4 * base, 3, stride=2, padding=1)  # @8
        self.mid1 = ResidualBlock(4 * base, 4 * base, temb_dim)
        self.mid_attn = AttentionBlock(4 * base)
        self.mid2 = ResidualBlock(4 * base, 4 * base, temb_dim)
        self.upsample1 = nn.ConvTranspose2d(4 * base, 4 * base, 4, stride=2, padding=1)  # @16
        self.up1 = ResidualBlock(8 * base, 2 * base, temb_dim)                  # 512 -> 128
        self.upsample2 = nn.ConvTranspose2d(2 * base, 2 * base, 4, stride=2, padding=1)  # @32
        self.up2 = ResidualBlock(4 * base, base, temb_dim)                      # 256 -> 64
        self.final_norm = nn.GroupNorm(8, base)
        self.final_conv = nn.Conv2d(base, in_ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(self.time_embed(t))
        x = self.init_conv(x)
        skip1 = self.down1(x, temb)
        x = self.downsample1(skip1)
        skip2 = self.down2(x, temb)
        x = self.downsample2(skip2)
        x = self.mid1(x, temb)
        x = self.mid_attn(x)
        x = self.mid2(x, temb)
        x = self.upsample1(x)
        x = self.up1(torch.cat([x, skip2], dim=1), temb)
        x = self.upsample2(x)
        x = self.up2(torch.cat([x, skip1], dim=1), temb)
        return self.final_conv(F.relu(self.final_norm(x)))


# --------------------------------------------------------------------------------------
# (b) Radboud MNIST UNet(c_in=1, c_out=1, width=16) and its conditional variant
# --------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, h_size: int, num_heads: int = 4):
        super().__init__()
        self.h_size = h_size
        self.mha = nn.MultiheadAttention(h_size, num_heads, batch_first=True)
        self.ln = nn.LayerNorm([h_size])
        self.ff_self = nn.Sequential(
            nn.LayerNorm([h_size]),
            nn.Linear(h_size, h_size),
            nn.GELU(),
            nn.Linear(h_size, h_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_ln = self.ln(x)
        attention_value, _ = self.mha(x_ln, x_ln, x_ln)
        attention_value = attention_value + x
        attention_value = self.ff_self(attention_value) + attention_value
        return attention_value


class SAWrapper(nn.Module):
    def __init__(self, h_size: int, num_s: int):
        super().__init__()
        self.sa = nn.Sequential(*[SelfAttention(h_size) for _ in range(1)])
        self.num_s = num_s
        self.h_size = h_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.h_size, self.num_s * self.num_s).swapaxes(1, 2)
        x = self.sa(x)
        x = x.swapaxes(2, 1).view(-1, self.h_size, self.num_s, self.num_s)
        return x


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None,
                 residual: bool = False):
        super().__init__()
        self.residual = residual
        if not mid_channels:
            mid_channels = out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, mid_channels),
            nn.GELU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(1, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return F.gelu(x + self.double_conv(x))
        return self.double_conv(x)


class Down(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(
            nn.MaxPool2d(2),
            DoubleConv(in_channels, in_channels, residual=True),
            DoubleConv(in_channels, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bilinear: bool = True):
        super().__init__()
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = DoubleConv(in_channels, in_channels, residual=True)
            self.conv2 = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)
            self.conv2 = nn.Identity()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1 = self.up(x1)
        diff_y = x2.size()[2] - x1.size()[2]
        diff_x = x2.size()[3] - x1.size()[3]
        x1 = F.pad(x1, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])
        x = torch.cat([x2, x1], dim=1)
        x = self.conv(x)
        x = self.conv2(x)
        return x


class OutConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class UNet(nn.Module):
    """Input (B, c_in, 32, 32) (MNIST zero-padded to 32x32); t is a float tensor (B,) of raw
    timestep indices 0..999."""

    def __init__(self, c_in: int = 1, c_out: int = 1, width: int = 16):
        super().__init__()
        w = width
        self.width = w
        self.inc = DoubleConv(c_in, w)
        self.down1 = Down(w, 2 * w)
        self.down2 = Down(2 * w, 4 * w)
        self.down3 = Down(4 * w, 4 * w)
        self.up1 = Up(8 * w, 2 * w)
        self.up2 = Up(4 * w, w)
        self.up3 = Up(2 * w, w)
        self.outc = OutConv(w, c_out)
        self.sa1 = SAWrapper(4 * w, 8)
        self.sa2 = SAWrapper(4 * w, 4)
        self.sa3 = SAWrapper(2 * w, 8)

    @staticmethod
    def pos_encoding(t: torch.Tensor, channels: int, embed_size: int) -> torch.Tensor:
        inv_freq = 1.0 / (
            10000 ** (torch.arange(0, channels, 2, device=t.device).float() / channels)
        )
        pos_enc_a = torch.sin(t[:, None].repeat(1, channels // 2) * inv_freq)
        pos_enc_b = torch.cos(t[:, None].repeat(1, channels // 2) * inv_freq)
        pos_enc = torch.cat([pos_enc_a, pos_enc_b], dim=-1)
        return pos_enc.view(-1, channels, 1, 1).repeat(1, 1, embed_size, embed_size)

    def cond(self, t: torch.Tensor, label, channels: int, size: int) -> torch.Tensor:
        return self.pos_encoding(t, channels, size)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label=None) -> torch.Tensor:
        w = self.width
        x1 = self.inc(x)
        x2 = self.down1(x1) + self.cond(t, label, 2 * w, 16)
        x3 = self.down2(x2) + self.cond(t, label, 4 * w, 8)
        x3 = self.sa1(x3)
        x4 = self.down3(x3) + self.cond(t, label, 4 * w, 4)
        x4 = self.sa2(x4)
        x = self.up1(x4, x3) + self.cond(t, label, 2 * w, 8)
        x = self.sa3(x)
        x = self.up2(x, x2) + self.cond(t, label, w, 16)
        x = self.up3(x, x1) + self.cond(t, label, w, 32)
        return self.outc(x)


class UNetConditional(UNet):
    """Adds nn.Embedding(n_classes, 4w) label encodings (sliced to the channel count) at the
    same places as the time encodings."""

    def __init__(self, c_in: int = 1, c_out: int = 1, width: int = 16, n_classes: int = 10):
        super().__init__(c_in, c_out, width)
        self.label_embedding = nn.Embedding(n_classes, 4 * width)

    def label_encoding(self, label: torch.Tensor, channels: int, size: int) -> torch.Tensor:
        return self.label_embedding(label)[:, :channels, None, None].repeat(1, 1, size, size)

    def cond(self, t, label, channels, size):
        return self.pos_encoding(t, channels, size) + self.label_encoding(label, channels, size)
