"""The reference point: an eager PyTorch PNI-W + PGD-7 + L1 train step on ResNet-20.

This is how the RSR step is usually written today (PNI's public code is eager
PyTorch). It is a benchmark baseline only; rsr_tf does not use PyTorch.

  pip install torch==2.13.0   # CPU build
  python benchmarks/torch_pni_step.py [--bf16] [--output=torch.json]
"""

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F


class NoisyConv(nn.Conv2d):
  """Conv with channel-wise PNI-W: w + alpha * N(0, std(w)^2), noise always on."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.alpha = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), 0.25))

  def forward(self, x):
    with torch.no_grad():
      eta = torch.randn_like(self.weight) * self.weight.std()
    return self._conv_forward(x, self.weight + self.alpha * eta, self.bias)


class Block(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = NoisyConv(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = NoisyConv(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.pad = stride, cout - cin

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x[:, :, ::self.stride, ::self.stride]
    if self.pad:  # option-A shortcut, as in the TF model
      shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    return F.relu(out + shortcut)


class ResNet20(nn.Module):
  def __init__(self):
    super().__init__()
    self.register_buffer("mean", torch.tensor([0.49, 0.48, 0.45]).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor([0.25, 0.24, 0.26]).view(1, 3, 1, 1))
    self.stem = NoisyConv(3, 16, 3, 1, 1, bias=False)
    self.bn = nn.BatchNorm2d(16)
    blocks, cin = [], 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
      for i in range(3):
        blocks.append(Block(cin, cout, stride if i == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.fc = nn.Linear(64, 10)

  def forward(self, x):
    x = F.relu(self.bn(self.stem((x - self.mean) / self.std)))
    x = self.blocks(x)
    return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def pgd(model, x, y, eps=8 / 255, step=2 / 255, steps=7):
  x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
  for _ in range(steps):
    x_adv.requires_grad_(True)
    loss = F.cross_entropy(model(x_adv), y)
    grad, = torch.autograd.grad(loss, x_adv)
    x_adv = torch.min(torch.max(x_adv.detach() + step * grad.sign(), x - eps), x + eps)
    x_adv = x_adv.clamp(0, 1)
  return x_adv.detach()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--steps_per_repeat", type=int, default=2)
  parser.add_argument("--bf16", action="store_true", help="torch.autocast bf16")
  parser.add_argument("--output")
  args = parser.parse_args()
  torch.manual_seed(0)
  model = ResNet20()
  kernels = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
  decayed = {id(k) for k in kernels}
  optimizer = torch.optim.SGD(
      [{"params": kernels, "weight_decay": 3e-4},
       {"params": [p for p in model.parameters() if id(p) not in decayed],
        "weight_decay": 0.0}], lr=0.01, momentum=0.9, nesterov=True)
  x = torch.rand(args.batch, 3, 32, 32)
  y = torch.randint(0, 10, (args.batch,))

  def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
      model.train()
      logits = model(x)
      model.eval()  # attack in inference mode, noise still on
      x_adv = pgd(model, x, logits.argmax(1).detach())
      model.train()
      loss = 0.5 * F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(model(x_adv), y)
      loss = loss + 5e-6 * sum(k.abs().sum() for k in kernels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

  for _ in range(2):
    step()
  seconds = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps_per_repeat):
      step()
    seconds.append((time.perf_counter() - start) / args.steps_per_repeat)
  rate = args.batch / statistics.median(seconds)
  name = "torch_eager_bf16" if args.bf16 else "torch_eager_fp32"
  print(f"{name:<18} {rate:>8.1f} images/s (batch {args.batch}, PGD-7, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})")
  if args.output:
    with open(args.output, "w") as f:
      json.dump({name: {"images_per_second": rate, "seconds": seconds,
                        "torch": torch.__version__}}, f, indent=2)


if __name__ == "__main__":
  main()
