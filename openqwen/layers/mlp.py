"""Feed-forward blocks: the SwiGLU MLP and the routed mixture of experts (both Qwen MoE kinds)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import fast_path


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)
        self.gate_up_packed = None  # set by layers.fused.pack_model: gate and up as one GEMM

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_packed is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        h = self.gate_up_packed.packed(x)  # [T, 2I] = [gate | up]
        if fast_path(h):
            from .fused import FastLinear, linear
            from .fused_ops import silu_mul

            if type(self.down_proj) is FastLinear:  # the activation fused into the GEMV
                return linear(h, self.down_proj.weight, self.down_proj.bias, silu_mul_input=True)
            return self.down_proj(silu_mul(h))
        gate, up = h.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Experts(nn.Module):
    """E SwiGLU experts stored stacked: gate/up [E, I, D], down [E, D, I].

    Checkpoints store one tensor per expert (`experts.{e}.gate_proj.weight`); the loader stacks them.
    """

    def __init__(self, num_experts: int, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.up_proj = nn.Parameter(torch.empty(num_experts, intermediate_size, hidden_size))
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden_size, intermediate_size))

    def forward(self, x: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x [T, D]; expert_ids, weights [T, k]. Runs each expert once on the tokens routed to it."""
        out = torch.zeros_like(x)
        flat_ids = expert_ids.flatten()
        order = flat_ids.argsort(stable=True)
        counts = torch.bincount(flat_ids, minlength=self.gate_proj.shape[0]).tolist()
        token_of = order // expert_ids.shape[1]
        start = 0
        for expert, count in enumerate(counts):
            if count == 0:
                continue
            rows = order[start:start + count]
            tokens = token_of[start:start + count]
            start += count
            h = x[tokens]
            h = F.linear(F.silu(F.linear(h, self.gate_proj[expert])) * F.linear(h, self.up_proj[expert]), self.down_proj[expert])
            out.index_add_(0, tokens, h * weights.flatten()[rows, None])
        return out


class SparseMoE(nn.Module):
    """Router -> top-k experts (softmax in fp32 over all experts, optional renormalization),
    plus Qwen2-MoE's shared expert gated by sigmoid(shared_expert_gate(x))."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, moe_intermediate_size: int,
                 norm_topk_prob: bool, shared_expert_intermediate_size: int = 0) -> None:
        super().__init__()
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.gate = nn.Linear(hidden_size, num_experts, bias=False)
        self.experts = Experts(num_experts, hidden_size, moe_intermediate_size)
        if shared_expert_intermediate_size:
            self.shared_expert = SwiGLU(hidden_size, shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(hidden_size, 1, bias=False)
        else:
            self.shared_expert = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float)
        weights, expert_ids = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = self.experts(x, expert_ids, weights.to(x.dtype))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out
