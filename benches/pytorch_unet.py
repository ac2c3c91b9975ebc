#!/usr/bin/env python3
"""PyTorch reference for `flowlab bench --only unet` and `--only ops`.

Builds FlowLab's MNIST UNet exactly (src/model/unet.rs): channels 32/64/128, one
residual block per level, GroupNorm(8) + SiLU, the time embedding
[t, sin(w_k t), cos(w_k t)] (16 frequencies geometric from 1 to 50) -> Linear
-> SiLU -> Linear -> SiLU, entering every block as a per-channel scale and shift
(norm2(h) * (1 + s) + h), stride-2 3x3 convolutions down, nearest upsampling
up, skip concatenations, single-head attention at 7x7. Same training step as
FlowLab: CondOT loss on MNIST scaled to [-1, 1], AdamW (lr 2e-3, no weight
decay), gradient clipping at 1.0, EMA 0.999; sampling with the midpoint rule,
20 steps, batch 128. Then the same per-op shapes as FlowLab's op table.

Usage:  python3 benches/pytorch_unet.py [--seconds 10] [--only unet|ops]
Needs:  pip install torch   (CPU; threads = all cores unless OMP_NUM_THREADS is set)
"""

import argparse
import gzip
import math
import os
import time

import torch
from torch import nn
import torch.nn.functional as F

FREQS = 16
MAX_FREQ = 50.0
GROUPS = 8
HERE = os.path.dirname(os.path.abspath(__file__))


class ResBlock(nn.Module):
    def __init__(self, c_in, c_out, emb):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.embed = nn.Linear(emb, 2 * c_out)
        self.norm2 = nn.GroupNorm(GROUPS, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        s, sh = self.embed(emb).chunk(2, dim=1)
        h = self.norm2(h) * (1 + s[:, :, None, None]) + sh[:, :, None, None]
        h = self.conv2(F.silu(h))
        return h + (self.skip(x) if self.skip is not None else x)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w)
        q, k, v = qkv[:, :c], qkv[:, c:2 * c], qkv[:, 2 * c:]
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)
        out = v @ attn.transpose(1, 2)
        return x + self.proj(out.reshape(b, c, h, w))


class Unet(nn.Module):
    def __init__(self, channels=(32, 64, 128), emb=128, img_c=1):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(MAX_FREQ), FREQS)))
        self.time = nn.Sequential(nn.Linear(2 * FREQS + 1, emb), nn.SiLU(), nn.Linear(emb, emb))
        c = channels[0]
        self.conv_in = nn.Conv2d(img_c, c, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for l, cl in enumerate(channels):
            self.down.append(ResBlock(c, cl, emb))
            c = cl
            self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if l + 1 < len(channels) else nn.Identity())
        self.mid = ResBlock(c, c, emb)
        self.attn = Attention(c)
        self.up = nn.ModuleList()
        for cl in reversed(channels):
            self.up.append(ResBlock(c + cl, cl, emb))
            c = cl
        self.norm_out = nn.GroupNorm(GROUPS, c)
        self.conv_out = nn.Conv2d(c, img_c, 3, padding=1)
        self.levels = len(channels)

    def forward(self, x, t):
        t = t[:, None]
        arg = t * self.freqs[None, :]
        emb = F.silu(self.time(torch.cat([t, arg.sin(), arg.cos()], dim=1)))
        h = self.conv_in(x)
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, emb)
            skips.append(h)
            h = down(h)
        h = self.attn(self.mid(h, emb))
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i + 1 < self.levels:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv_out(F.silu(self.norm_out(h)))


def mnist() -> torch.Tensor:
    with gzip.open(os.path.join(HERE, "..", "assets", "mnist", "train-images-idx3-ubyte.gz")) as f:
        raw = bytearray(f.read())
    data = torch.frombuffer(raw, dtype=torch.uint8, offset=16).reshape(-1, 1, 28, 28)
    return data.float() / 127.5 - 1.0


def rate(seconds: float, fn) -> float:
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_unet(seconds: float, batch: int = 128) -> str:
    torch.manual_seed(0)
    images = mnist()
    model, ema = Unet(), Unet()
    ema.load_state_dict(model.state_dict())
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step():
        x1 = images[torch.randint(0, images.shape[0], (batch,))]
        x0 = torch.randn_like(x1)
        t = torch.rand(batch)
        tt = t[:, None, None, None]
        xt = tt * x1 + (1 - tt) * x0
        loss = ((model(xt, t) - (x1 - x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.mul_(0.999).add_(p, alpha=0.001)

    steps = rate(seconds, step)
    x0 = torch.randn(batch, 1, 28, 28)

    @torch.no_grad()
    def sample():
        x, n = x0, 20
        for k in range(n):
            ta, h = k / n, 1.0 / n
            k1 = ema(x, torch.full((batch,), ta))
            k2 = ema(x + 0.5 * h * k1, torch.full((batch,), ta + 0.5 * h))
            x = x + h * k2
        return x

    samples = rate(seconds, sample) * batch
    return (f"| MNIST UNet 32/64/128, batch {batch} | {params} | {steps:.2f} | {1000 / steps:.1f} "
            f"| {samples:.0f} | {batch} |")


def filled(*shape):
    n = math.prod(shape)
    v = ((torch.arange(n, dtype=torch.int64) * 7919) % 2001).float() / 1000.0 - 1.0
    return v.reshape(shape).requires_grad_(True)


def bench_ops(seconds: float):
    s = min(seconds, 3.0)
    rows = []

    def row(op, shape, fn, flop=None):
        ms = 1000.0 / rate(s, fn)
        g = f"{flop / ms / 1e6:.1f}" if flop else ""
        rows.append(f"| {op} | {shape} | {ms:.2f} | {g} |")

    a, b = filled(4096, 512).detach(), filled(512, 512).detach()
    row("matmul", "4096x512 · 512x512", lambda: a @ b, 2.0 * 4096 * 512 * 512)
    for c_in, c_out, hw in [(32, 32, 28), (64, 64, 14), (256, 128, 7)]:
        batch = 128
        shape = f"{batch}x{c_in}x{hw}x{hw}, 3x3 → {c_out}"
        x, w, bias = filled(batch, c_in, hw, hw), filled(c_out, c_in, 3, 3), filled(c_out)
        flop = 2.0 * batch * c_out * hw * hw * c_in * 9
        with torch.no_grad():
            row("conv2d forward", shape, lambda: F.conv2d(x, w, bias, padding=1), flop)
        y = F.conv2d(x, w, bias, padding=1)
        g = filled(*y.shape).detach()
        row("conv2d backward: dx, dw, db", shape,
            lambda: torch.autograd.grad(y, (x, w, bias), g, retain_graph=True), 2.0 * flop)
    batch, c, hw = 128, 64, 14
    shape = f"{batch}x{c}x{hw}x{hw}, 8 groups"
    x, gamma, beta, ss = filled(batch, c, hw, hw), filled(c), filled(c), filled(batch, 2 * c)
    gw = filled(batch, c, hw, hw).detach()

    def gn():
        y = F.group_norm(x, 8, gamma, beta) * (1 + ss[:, :c, None, None]) + ss[:, c:, None, None]
        return F.silu(y)

    with torch.no_grad():
        row("GroupNorm + scale/shift + SiLU forward", shape, gn)
    row("  ... forward + backward", shape, lambda: (gn() * gw).sum().backward())
    x, gw = filled(4096, 512), filled(4096, 512).detach()
    with torch.no_grad():
        row("SiLU forward", "4096x512", lambda: F.silu(x))
    row("  ... forward + backward", "4096x512", lambda: (F.silu(x) * gw).sum().backward())
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default=None, help="unet or ops")
    args = ap.parse_args()
    print(f"PyTorch {torch.__version__} on cpu ({torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})\n")
    if args.only in (None, "unet"):
        print("| workload | params | train steps/s | ms/step | samples/s (midpoint, 20 steps) | sample batch |")
        print("|---|---|---|---|---|---|")
        print(bench_unet(args.seconds), flush=True)
        print()
    if args.only in (None, "ops"):
        print("| op | shape | ms | GFLOP/s |\n|---|---|---|---|")
        for r in bench_ops(args.seconds):
            print(r)


if __name__ == "__main__":
    main()
