"""Multi-scale graph reasoning (paper Sec. 3.2) and the aggregation operators of its ablation (seed Table 2).

Each block7 position (node A_j) is connected to the decoder positions inside its spatially aligned patch: 2x2 in
decoder2 and 4x4 in decoder4. Edge weights are softmax_m(ReLU(u^T [a_j ; b_jm])) and the aggregate is gated by
one minus a sigmoid of the encoder feature. The vectorised form below handles all nodes at once; the looped form
is the official per-position algorithm, kept as the baseline that tests and benchmarks compare against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

AGGREGATIONS = ("graph", "sum", "concat", "nonlocal")


def _node_mlp(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, cout, bias=False), nn.ReLU(inplace=True), nn.Linear(cout, cout, bias=False))


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class GraphReasoning(nn.Module):
    """Graph reasoning between block7 (728 ch) and decoder stages 2 (256 ch) and 4 (128 ch).

    Parameter names follow the official implementation so its checkpoints load unchanged. `aggregation` selects the
    operator of the ablation: "graph" (the paper's), "sum" and "concat" (decoder maps bilinearly resized to the
    block7 grid), "nonlocal" (dense attention from every block7 node to every decoder node). `multi_scale=False`
    keeps only the decoder2 branch.
    """

    def __init__(
        self,
        encoder_channels: int = 728,
        embed_channels: int = 256,
        decoder_channels: tuple[int, int] = (256, 128),
        ratios: tuple[int, int] = (2, 4),
        drop_rate: float = 0.2,
        aggregation: str = "graph",
        multi_scale: bool = True,
        looped: bool = False,
    ):
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if looped and aggregation != "graph":
            raise ValueError("the looped (official) algorithm exists only for aggregation='graph'")
        self.aggregation = aggregation
        self.multi_scale = multi_scale
        self.looped = looped
        self.ratios = ratios if multi_scale else ratios[:1]
        e = embed_channels
        self.va_embedding = nn.Sequential(
            nn.Conv2d(encoder_channels, e, 1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(e, e, 1, bias=False)
        )
        self.va_gated_b = nn.Sequential(nn.Conv2d(encoder_channels, e, 1, bias=False), nn.Sigmoid())
        self.vb_embedding = _node_mlp(decoder_channels[0], e)
        if aggregation == "graph":
            self.reweight_ab = nn.Sequential(nn.Linear(2 * e, 1, bias=False))
        if multi_scale:
            self.va_gated_c = nn.Sequential(nn.Conv2d(encoder_channels, e, 1, bias=False), nn.Sigmoid())
            self.vc_embedding = _node_mlp(decoder_channels[1], e)
            if aggregation == "graph":
                self.reweight_ac = nn.Sequential(nn.Linear(2 * e, 1, bias=False))
        branches = len(self.ratios)
        reproject_in = e if aggregation == "sum" else e * (branches + 1)
        self.reproject = nn.Sequential(
            nn.Conv2d(reproject_in, encoder_channels, 1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(encoder_channels, encoder_channels, 1, bias=False),
            nn.Dropout(drop_rate),
        )

    def _branches(self) -> list[tuple[nn.Module, nn.Module, nn.Module | None]]:
        names = [("vb_embedding", "va_gated_b", "reweight_ab"), ("vc_embedding", "va_gated_c", "reweight_ac")]
        return [
            (getattr(self, embed), getattr(self, gate), getattr(self, reweight, None))
            for embed, gate, reweight in names[: len(self.ratios)]
        ]

    def forward(self, encoder: torch.Tensor, *decoder: torch.Tensor) -> torch.Tensor:
        """Return the reasoning output (B, 728, h, w); the caller adds it to `encoder` (the residual)."""
        batch, _, h, w = encoder.shape
        a = self.va_embedding(encoder)
        aggregates = []
        for (embed, gate, reweight), ratio, features in zip(self._branches(), self.ratios, decoder, strict=False):
            if features.shape[-2:] != (h * ratio, w * ratio):
                raise ValueError(f"decoder map {tuple(features.shape[-2:])} is not {ratio}x the encoder grid {(h, w)}")
            aggregated = self._aggregate(a, features, ratio, embed, reweight)
            aggregates.append(aggregated * (1 - gate(encoder)))
        if self.aggregation == "sum":
            fused = torch.stack([*aggregates, a]).sum(0)
        else:
            fused = torch.cat([*aggregates, a], dim=1)
        return self.reproject(torch.sigmoid(fused))

    def _aggregate(
        self, a: torch.Tensor, features: torch.Tensor, ratio: int, embed: nn.Module, reweight: nn.Module | None
    ) -> torch.Tensor:
        batch, channels, h, w = a.shape
        if self.aggregation in ("sum", "concat"):
            resized = F.interpolate(features, size=(h, w), mode="bilinear", align_corners=False)
            return embed(_channels_last(resized)).permute(0, 3, 1, 2)
        nodes = _channels_last(a).reshape(batch, h * w, channels)
        if self.aggregation == "nonlocal":
            values = embed(_channels_last(features)).reshape(batch, -1, channels)
            out = F.scaled_dot_product_attention(nodes[:, None], values[:, None], values[:, None])[:, 0]
        else:
            # children[b, j, m] = embedding of decoder pixel m (row-major in the ratio x ratio patch) of node j,
            # the same order as nn.Unfold(kernel=ratio, stride=ratio) in the official code. The patches are gathered
            # before the embedding: one copy of the narrower decoder map rather than one of the embedded map.
            patches = (
                features.reshape(batch, -1, h, ratio, w, ratio)
                .permute(0, 2, 4, 3, 5, 1)
                .reshape(batch, h * w, ratio * ratio, -1)
            )
            children = embed(patches)
            out = (self._looped if self.looped else self._vectorised)(nodes, children, reweight[0].weight)
        return out.transpose(1, 2).reshape(batch, channels, h, w)

    @staticmethod
    def _vectorised(nodes: torch.Tensor, children: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # u^T [a ; b] = u_a^T a + u_b^T b: the (B, N, k, 2C) concatenation is never materialised.
        u_node, u_child = weight.split(nodes.shape[-1], dim=1)
        scores = (nodes @ u_node.t()).unsqueeze(2) + children @ u_child.t()  # (B, N, k, 1)
        edge = torch.softmax(F.relu(scores), dim=2)
        # Weighted sum as (1, k) @ (k, C) per node: the (B, N, k, C) weighted children are never materialised.
        return (edge.transpose(2, 3) @ children).squeeze(2)

    @staticmethod
    def _looped(nodes: torch.Tensor, children: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        k = children.shape[2]
        out = []
        for j in range(nodes.shape[1]):
            pair = torch.cat([nodes[:, j : j + 1].expand(-1, k, -1), children[:, j]], dim=-1)  # (B, k, 2C)
            edge = torch.softmax(F.relu(F.linear(pair, weight)), dim=1)  # (B, k, 1)
            out.append(torch.bmm(edge.transpose(1, 2), children[:, j]).squeeze(1))
        return torch.stack(out, dim=1)
