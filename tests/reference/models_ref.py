"""Reference for tests/models/models_test.cpp: GPT-2 and LLaMA rebuilt in plain PyTorch (float64) from the
parameter names documented in src/kolos/models/{gpt,llama}/*.h, with the layers of layers_ref.py (explicit causal
mask and softmax, RoPE as a complex rotation, grouped-query attention by repeating key/value heads).

usage: models_ref.py IN.safetensors OUT.safetensors

IN: "param.<name>" for every parameter, "ids" and "targets" (B, T) int64; metadata "config" is the JSON of the
model config (arch, layers, hidden, heads, kv_heads, vocab, norm_eps, rope_theta, tie_embeddings).
OUT: "logits" (B, T, V), "loss" (1) = mean cross-entropy of logits against targets, "grad.<name>" = d loss / d param."""

import json
import sys

import torch

import st_io
from layers_ref import attention, cross_entropy, embedding, gelu, layer_norm, linear, rms_norm, rope


def split_heads(t, heads):
    """(B, T, heads * D) -> (B, heads, T, D)."""
    B, T, _ = t.shape
    return t.reshape(B, T, heads, -1).transpose(1, 2)


def merge_heads(t):
    """(B, H, T, D) -> (B, T, H * D)."""
    B, H, T, D = t.shape
    return t.transpose(1, 2).reshape(B, T, H * D)


def gpt2(p, ids, c):
    T, C, H, eps = ids.shape[1], c["hidden"], c["heads"], c["norm_eps"]
    x = embedding(p["wte.weight"], ids) + p["wpe.weight"][:T]
    for i in range(c["layers"]):
        w = lambda n: p[f"h.{i}.{n}"]
        h = layer_norm(x, w("ln_1.weight"), w("ln_1.bias"), eps)
        qkv = linear(h, w("attn.qkv.weight"), w("attn.qkv.bias"))
        q, k, v = (split_heads(qkv[..., j * C : (j + 1) * C], H) for j in range(3))
        x = x + linear(merge_heads(attention(q, k, v)), w("attn.proj.weight"), w("attn.proj.bias"))
        h = layer_norm(x, w("ln_2.weight"), w("ln_2.bias"), eps)
        h = gelu(linear(h, w("mlp.fc.weight"), w("mlp.fc.bias")))
        x = x + linear(h, w("mlp.proj.weight"), w("mlp.proj.bias"))
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    return linear(x, p["wte.weight"])


def silu(z):
    return z / (1.0 + torch.exp(-z))


def llama(p, ids, c):
    H, KV, eps, theta = c["heads"], c["kv_heads"], c["norm_eps"], c["rope_theta"]
    group = H // KV
    kv_of_head = [j // group for j in range(H)]  # query head j reads key/value head j // (H / KV)
    x = embedding(p["embed_tokens.weight"], ids)
    for i in range(c["layers"]):
        w = lambda n: p[f"layers.{i}.{n}"]
        h = rms_norm(x, w("input_layernorm.weight"), eps)
        q = rope(split_heads(linear(h, w("self_attn.q_proj.weight")), H), theta)
        k = rope(split_heads(linear(h, w("self_attn.k_proj.weight")), KV), theta)
        v = split_heads(linear(h, w("self_attn.v_proj.weight")), KV)
        k, v = k[:, kv_of_head], v[:, kv_of_head]
        x = x + linear(merge_heads(attention(q, k, v)), w("self_attn.o_proj.weight"))
        h = rms_norm(x, w("post_attention_layernorm.weight"), eps)
        h = silu(linear(h, w("mlp.gate_proj.weight"))) * linear(h, w("mlp.up_proj.weight"))
        x = x + linear(h, w("mlp.down_proj.weight"))
    x = rms_norm(x, p["norm.weight"], eps)
    head = p["embed_tokens.weight"] if c["tie_embeddings"] else p["lm_head.weight"]
    return linear(x, head)


def main():
    torch.set_num_threads(1)
    tensors, meta = st_io.load(sys.argv[1])
    config = json.loads(meta["config"])
    params = {k[len("param.") :]: t.double().requires_grad_() for k, t in tensors.items() if k.startswith("param.")}
    ids, targets = tensors["ids"], tensors["targets"]
    logits = {"gpt2": gpt2, "llama": llama}[config["arch"]](params, ids, config)
    loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    grads = torch.autograd.grad(loss, list(params.values()))
    out = {"logits": logits, "loss": loss}
    out.update({"grad." + name: g for name, g in zip(params, grads)})
    st_io.save(sys.argv[2], out)


if __name__ == "__main__":
    main()
