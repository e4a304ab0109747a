"""Reference for tests/nn/layers_test.cpp: each kolos layer rewritten from its mathematical definition in plain
PyTorch, in float64 (no torch.nn.functional layer is used, so a shared library bug cannot hide on both sides).

usage: layers_ref.py IN.safetensors OUT.safetensors

IN's metadata "cases" is a JSON list of {"name", "op", attributes...}; the case's tensors are "<name>.<arg>", and
"<name>.cot" (optional) is the cotangent: the objective is sum(out * cot), or out itself when it is a scalar.
OUT holds "<name>.out" (or the op's named outputs) and "<name>.grad.<arg>" for every floating-point argument."""

import json
import math
import sys

import torch

import st_io


def linear(x, weight, bias=None):
    y = torch.einsum("...i,oi->...o", x, weight)
    return y if bias is None else y + bias


def embedding(weight, ids):
    rows = torch.stack([weight[int(i)] for i in ids.reshape(-1)])
    return rows.reshape(*ids.shape, weight.shape[1])


def layer_norm(x, weight, bias, eps):
    mean = x.sum(-1, keepdim=True) / x.shape[-1]
    var = ((x - mean) ** 2).sum(-1, keepdim=True) / x.shape[-1]  # biased, as LayerNorm defines it
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


def rms_norm(x, weight, eps):
    ms = (x * x).sum(-1, keepdim=True) / x.shape[-1]
    return x / torch.sqrt(ms + eps) * weight


def gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def rope_angles(T, D, theta):
    """(T, D/2) angles t * theta^(-2i/D)."""
    i = torch.arange(D // 2, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64)
    return t[:, None] * theta ** (-2.0 * i / D)[None, :]


def rope(x, theta):
    """Rotate-half RoPE as a complex rotation: the pair (x[i], x[i + D/2]) is the complex number
    x[i] + j x[i + D/2], multiplied by exp(j * angle(t, i)). x: (B, H, T, D)."""
    T, D = x.shape[-2], x.shape[-1]
    z = torch.complex(x[..., : D // 2], x[..., D // 2 :])
    z = z * torch.polar(torch.ones(T, D // 2, dtype=torch.float64), rope_angles(T, D, theta))
    return torch.cat([z.real, z.imag], -1)


def rope_tables(c):
    ang = rope_angles(c["T"], c["D"], c["theta"])
    ang = torch.cat([ang, ang], -1)
    return {"cos": torch.cos(ang), "sin": torch.sin(ang)}


def cross_entropy(logits, targets):
    """Mean over rows of logsumexp(logits) - logits[target]. logits: (N, V), targets: (N)."""
    m = logits.max(-1, keepdim=True).values.detach()
    logz = m.squeeze(-1) + torch.log(torch.exp(logits - m).sum(-1))
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return (logz - picked).mean()


def head_cross_entropy(hidden, weight, bias, targets):
    """cross_entropy of the logits hidden Wᵀ + b over the rows whose target is not -100 (ignored)."""
    keep = targets != -100
    return cross_entropy(linear(hidden, weight, bias)[keep], targets[keep])


def attention(q, k, v):
    """Causal softmax attention with an explicit (T, T) mask. q, k, v: (B, H, T, D)."""
    T, D = q.shape[-2], q.shape[-1]
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    s = s.masked_fill(future, float("-inf"))
    p = torch.exp(s - s.max(-1, keepdim=True).values.detach())
    p = p / p.sum(-1, keepdim=True)
    return p @ v


# op name -> f(args, case attributes)
OPS = {
    "linear": lambda a, c: linear(a["x"], a["weight"], a.get("bias")),
    "embedding": lambda a, c: embedding(a["weight"], a["ids"]),
    "layer_norm": lambda a, c: layer_norm(a["x"], a["weight"], a["bias"], c["eps"]),
    "rms_norm": lambda a, c: rms_norm(a["x"], a["weight"], c["eps"]),
    "gelu": lambda a, c: gelu(a["x"]),
    "rope": lambda a, c: rope(a["x"], c["theta"]),
    "rope_tables": lambda a, c: rope_tables(c),
    "cross_entropy": lambda a, c: cross_entropy(a["logits"], a["targets"]),
    "head_cross_entropy": lambda a, c: head_cross_entropy(a["hidden"], a["weight"], a.get("bias"), a["targets"]),
    "attention": lambda a, c: attention(a["q"], a["k"], a["v"]),
}


def main():
    torch.set_num_threads(1)
    tensors, meta = st_io.load(sys.argv[1])
    result = {}
    for case in json.loads(meta["cases"]):
        name = case["name"]
        prefix = name + "."
        args = {}
        for key, t in tensors.items():
            if key.startswith(prefix) and key != prefix + "cot":
                arg = key[len(prefix) :]
                args[arg] = t.double().requires_grad_() if t.is_floating_point() else t
        out = OPS[case["op"]](args, case)
        if isinstance(out, dict):
            for key, t in out.items():
                result[prefix + key] = t
            continue
        result[prefix + "out"] = out
        objective = (out * tensors[prefix + "cot"].double()).sum() if prefix + "cot" in tensors else out
        floats = {k: t for k, t in args.items() if t.is_floating_point()}
        grads = torch.autograd.grad(objective, list(floats.values()))
        for arg, g in zip(floats, grads):
            result[prefix + "grad." + arg] = g
    st_io.save(sys.argv[2], result)


if __name__ == "__main__":
    main()
