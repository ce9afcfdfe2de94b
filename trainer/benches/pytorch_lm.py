#!/usr/bin/env python3
"""The PyTorch yardstick of `hivemesh model train-lm` (issue 27).

The same model (pre-norm GPT blocks with biases, exact GELU, learned positions, tied head, no
dropout), the same schedule (AdamW, linear warm-up then cosine to lr/10, per-parameter gradient
norm clipping as burn does), the same corpus split (first 90 % trains, last 10 % validates,
one token per character, the sorted characters as the vocabulary) and the very same windows
(SplitMix64 streams seeded as `trainer/src/lm/train.rs` seeds them), started from the very
same weights (`--init`, written by `hivemesh model train-lm --save-init`). What differs is
only the arithmetic of the two frameworks.

    hivemesh model train-lm --corpus C --out lm.safetensors --save-init init.safetensors
    python3 trainer/benches/pytorch_lm.py --corpus C --init init.safetensors

Prints the validation loss at each evaluation and tokens/s (2 threads unless --threads).
Needs torch, numpy and safetensors; not run in CI.
"""

import argparse
import gzip
import json
import math
import struct
import time

import numpy as np
import torch
import torch.nn.functional as F

M64 = (1 << 64) - 1
TRAIN_WINDOWS = 0x6C6D747261696E21
EVAL_WINDOWS = 0x6576616C75617465


class Windows:
    """SplitMix64, as `lm::train::Windows`."""

    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    def draw(self, stream, t, batch):
        starts = len(stream) - t
        idx = [self.next() % starts for _ in range(batch)]
        x = np.stack([stream[s : s + t] for s in idx])
        y = np.stack([stream[s + 1 : s + t + 1] for s in idx])
        return torch.from_numpy(x).long(), torch.from_numpy(y).long()


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = json.loads(header.pop("__metadata__")["hivemesh_lm"])
    body = raw[8 + n :]
    tensors = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        tensors[name] = torch.from_numpy(
            np.frombuffer(body[a:b], dtype="<f4").reshape(info["shape"]).copy()
        )
    return meta, tensors


class Block(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(d, eps=1e-5)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.proj = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d, eps=1e-5)
        self.fc = torch.nn.Linear(d, 4 * d)
        self.out = torch.nn.Linear(4 * d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, h, d // h).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(2, 3)) * (1.0 / math.sqrt(d // h))
        att = att.masked_fill(mask[:t, :t], float("-inf")).softmax(dim=3)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class Lm(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["width"]
        self.tok = torch.nn.Parameter(torch.zeros(c["vocab"], d))
        self.pos = torch.nn.Parameter(torch.zeros(c["context"], d))
        self.blocks = torch.nn.ModuleList(Block(d, c["heads"]) for _ in range(c["layers"]))
        self.ln_f = torch.nn.LayerNorm(d, eps=1e-5)
        t = c["context"]
        self.register_buffer("mask", torch.ones(t, t, dtype=torch.bool).triu(1))

    def forward(self, x):
        t = x.shape[1]
        h = self.tok[x] + self.pos[:t]
        for blk in self.blocks:
            h = blk(h, self.mask)
        return self.ln_f(h) @ self.tok.T

    def load(self, tensors):
        """Our names; linear weights are stored [in, out] (torch keeps [out, in])."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                ours = name.replace(".weight", ".gamma").replace(".bias", ".beta")
                is_norm = ".ln" in name or name.startswith("ln_f")
                src = tensors[ours if is_norm else name]
                p.copy_(src.T if (name.endswith(".weight") and not is_norm) else src)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--init", required=True, help="train-lm --save-init's file")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    raw = open(a.corpus, "rb").read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8")
    meta, tensors = read_safetensors(a.init)
    vocab = meta["vocab"]
    assert vocab == "".join(sorted(set(text))), "the init file's vocabulary is not this corpus's"
    index = {ch: i for i, ch in enumerate(vocab)}
    tokens = np.array([index[ch] for ch in text], dtype=np.int64)
    cut = len(tokens) - len(tokens) // 10
    train, val = tokens[:cut], tokens[cut:]
    c = meta["config"]
    model = Lm(c)
    model.load(tensors)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    t = c["context"]
    windows = Windows(a.seed ^ TRAIN_WINDOWS)
    lr_min = a.lr / 10

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        done = min((step - a.warmup) / max(a.steps - a.warmup, 1), 1.0)
        return lr_min + 0.5 * (1 + math.cos(math.pi * done)) * (a.lr - lr_min)

    def evaluate():
        w = Windows(a.seed ^ EVAL_WINDOWS)
        with torch.no_grad():
            losses = []
            for _ in range(max(a.eval_batches, 1)):
                x, y = w.draw(val, t, a.batch)
                logits = model(x)
                losses.append(F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1)).item())
        return sum(losses) / len(losses)

    started = time.perf_counter()
    for step in range(a.steps):
        x, y = windows.draw(train, t, a.batch)
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            torch.nn.utils.clip_grad_norm_([p], 1.0)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.step()
        done = step + 1
        if done == a.steps or (a.eval_every and done % a.eval_every == 0):
            elapsed = time.perf_counter() - started
            print(f"step {done}: loss {loss.item():.4f}, validation {evaluate():.4f} "
                  f"({done * a.batch * t / elapsed:.0f} tokens/s)", flush=True)
    elapsed = time.perf_counter() - started
    print(f"pytorch {torch.__version__}: {a.steps} steps in {elapsed:.1f} s, "
          f"{a.steps * a.batch * t / elapsed:.0f} tokens/s (evaluations included)")


if __name__ == "__main__":
    main()
