#!/usr/bin/env python3
"""PyTorch reference for `flowlab bench`: the same models, the same training step.

Mirrors FlowLab exactly: an MLP on [x, t, sin(w_k t), cos(w_k t)] (16 frequencies
geometric from 1 to 50), SiLU, CondOT flow-matching loss on freshly drawn moons,
AdamW (lr 2e-3, betas 0.9/0.999, eps 1e-8, no weight decay), global gradient-norm
clipping at 1.0 and an EMA of the weights (decay 0.999) updated every step; then
sampling throughput with the midpoint rule, 20 steps, batch 4096.

Usage:  python3 benches/pytorch_mlp.py [--seconds 10] [--only 4x512|moons]
Needs:  pip install torch   (CPU is enough; threads = all cores unless OMP_NUM_THREADS is set)
"""

import argparse
import math
import os
import time

import torch
from torch import nn

FREQS = 16
MAX_FREQ = 50.0


class Mlp(nn.Module):
    def __init__(self, width: int, depth: int):
        super().__init__()
        w = torch.exp(torch.linspace(0.0, math.log(MAX_FREQ), FREQS))
        self.register_buffer("freqs", w)
        layers, fan_in = [], 2 + 2 * FREQS + 1
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), nn.SiLU()]
            fan_in = width
        layers.append(nn.Linear(fan_in, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x, t):
        t = t[:, None]
        arg = t * self.freqs[None, :]
        return self.net(torch.cat([x, t, arg.sin(), arg.cos()], dim=1))


def moons(n: int) -> torch.Tensor:
    theta = math.pi * torch.rand(n)
    outer = torch.rand(n) < 0.5
    x = torch.where(outer, theta.cos(), 1.0 - theta.cos())
    y = torch.where(outer, theta.sin(), 0.5 - theta.sin())
    pts = torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2)
    return (pts - torch.tensor([0.5, 0.25])) / 0.72


def rate(seconds: float, fn) -> float:
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds or n < 3:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench(name: str, width: int, depth: int, batch: int, seconds: float) -> str:
    torch.manual_seed(0)
    model = Mlp(width, depth)
    ema = Mlp(width, depth)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)

    def step():
        x1 = moons(batch)
        x0 = torch.randn_like(x1)
        t = torch.rand(batch)
        xt = t[:, None] * x1 + (1 - t[:, None]) * x0
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
    x0 = torch.randn(4096, 2)

    @torch.no_grad()
    def sample():
        x, n = x0, 20
        for k in range(n):
            ta, h = k / n, 1.0 / n
            k1 = ema(x, torch.full((4096,), ta))
            k2 = ema(x + 0.5 * h * k1, torch.full((4096,), ta + 0.5 * h))
            x = x + h * k2
        return x

    samples = rate(seconds, sample) * 4096
    return f"| {name} | {steps:.2f} | {1000 / steps:.1f} | {samples:.0f} |"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", default=None, help="only workloads whose name contains this (e.g. 4x512, moons)")
    args = ap.parse_args()
    print(f"PyTorch {torch.__version__} on cpu ({torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})\n")
    print("| workload | train steps/s | ms/step | samples/s (midpoint, 20 steps, batch 4096) |")
    print("|---|---|---|---|")
    for name, width, depth, batch in [
        ("4x512 SiLU MLP, batch 4096", 512, 4, 4096),
        ("default moons (3x256 SiLU MLP, batch 512)", 256, 3, 512),
    ]:
        if args.only is None or args.only.lower() in name.lower():
            print(bench(name, width, depth, batch, args.seconds), flush=True)


if __name__ == "__main__":
    main()
