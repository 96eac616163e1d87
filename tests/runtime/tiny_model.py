import torch
from torch import nn

class Attn(nn.Module):
    def __init__(s, h):
        super().__init__()
        s.q_proj, s.k_proj, s.v_proj, s.o_proj = (nn.Linear(h, h, bias=False) for _ in range(4))
    def forward(s, x):
        q, k, v = s.q_proj(x), s.k_proj(x), s.v_proj(x)
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        return s.o_proj(a)

class Mlp(nn.Module):
    def __init__(s, h, i):
        super().__init__()
        s.gate_proj, s.up_proj, s.down_proj = nn.Linear(h, i, bias=False), nn.Linear(h, i, bias=False), nn.Linear(i, h, bias=False)
    def forward(s, x):
        return s.down_proj(torch.nn.functional.silu(s.gate_proj(x)) * s.up_proj(x))

class Layer(nn.Module):
    def __init__(s, h, i):
        super().__init__()
        s.self_attn, s.mlp = Attn(h), Mlp(h, i)
    def forward(s, x):
        x = x + s.self_attn(x)
        return x + s.mlp(x)

class Inner(nn.Module):
    def __init__(s, h, i, n):
        super().__init__()
        s.layers = nn.ModuleList(Layer(h, i) for _ in range(n))

class Tiny(nn.Module):
    def __init__(s, h=128, i=256, n=2, vocab=256):
        super().__init__()
        s.model = Inner(h, i, n)
        s.lm_head = nn.Linear(h, vocab, bias=False)
    def forward(s, x):
        for l in s.model.layers:
            x = l(x)
        return s.lm_head(x)
