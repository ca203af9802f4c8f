"""RMSNorm as Qwen computes it: normalize in fp32, cast back, then scale (order matters in bf16)."""

import torch
from torch import nn

from .attention import fast_path


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.feeds_gemv = False  # set by layers.fused.pack_model: only a packed GEMM reads the output

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """norm(x); given the residual stream, (norm(x + residual), x + residual): the add and the
        norm are one kernel on CUDA, and none at decode batch sizes where the output feeds a
        packed GEMM (the GEMV computes it: layers.fused.DeferredRMSNorm)."""
        if x.dim() == 2 and x.stride(-1) == 1 and fast_path(x):
            if self.feeds_gemv:
                from .fused import defer_rmsnorm

                deferred = defer_rmsnorm(x, self.weight, self.eps, residual)
                if deferred is not None:
                    return deferred
            from .fused_ops import rmsnorm

            return rmsnorm(x, self.weight, self.eps, residual)
        if residual is not None:
            residual = x + residual
            return self._norm(residual), residual
        return self._norm(x)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)
