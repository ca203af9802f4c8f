"""QuantEmbedding: a token embedding whose table stays in its GGUF block format.

A step looks up a handful of rows, so only those rows are dequantized; the Qwen2.5 table
(151,936 x 896) would otherwise cost 545 MB in fp32 for a few KB of use per step.
"""

from __future__ import annotations

import torch
from torch import nn

from .quant import QuantLinear


class QuantEmbedding(nn.Module):
    def __init__(self, table: QuantLinear, dtype: torch.dtype) -> None:
        super().__init__()
        self.table = table  # rows = tokens, columns = hidden size
        self.dtype = dtype

    @property
    def embedding_dim(self) -> int:
        return self.table.in_features

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        ids = input_ids.reshape(-1)
        rows = self.table.dequantize(ids.cpu())
        return rows.to(device=input_ids.device, dtype=self.dtype).reshape(*input_ids.shape, -1)

    def as_linear(self) -> QuantLinear:
        """The same table as an output head, for checkpoints with tied embeddings."""
        return self.table
