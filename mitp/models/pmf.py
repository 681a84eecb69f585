"""PMF (Li et al., CVPR 2023, "Efficient Multimodal Fusion via Interactive Prompting") on the
same frozen towers as MITP, reconstructed from the authors' model file (``PMF.py``).

Notation as in :mod:`mitp.models.mitp`: X_l^m the tokens entering aligned layer l (B x N_m x d_m), f_l^m
the frozen layer, L the aligned depth. PMF prompts only the top F = ``n_fusion_layers`` layers,
l = L-F .. L-1 (fusion step j = l - (L-F)); the layers below are plain frozen layers, which is
why it trains from the feature cache like MITP (hidden states may enter any k <= L-F).
Prompts of fusion step j, each (n, d_m), expanded over the batch:

    QP_j^{v->t} (n_qp, d_v), QCP_j^{v->t} (n_qcp, d_v)     query prompts and their context, in ViT
    QP_j^{t->v} (n_qp, d_t), QCP_j^{t->v} (n_qcp, d_t)     the same in BERT
    FCP_j^v (n_fcp, d_v), FCP_j^t (n_fcp, d_t)              fusion-context prompts

    query:   Q^v = f_l^v([X_l^v ; QCP^{v->t} ; QP^{v->t}])[last n_qp]          (B, n_qp, d_v)
             Q^t = f_l^t([X_l^t ; QCP^{t->v} ; QP^{t->v}])[last n_qp]          (B, n_qp, d_t)
    map:     G^{v->t} = W_2 ReLU(W_1 Q^v + b_1) + b_2    (d_v -> h -> d_t)     one mapper per step
             G^{t->v} likewise (d_t -> h -> d_v);  h = max(d_v, d_t) / 2
    fusion:  X_{l+1}^v = f_l^v([X_l^v ; FCP^v ; G^{t->v}])[first N_v]
             X_{l+1}^t = f_l^t([X_l^t ; FCP^t ; G^{v->t}])[first N_t]
    readout: logits = (Linear_v(LN_v(X_L^v)[CLS]) + Linear_t(X_L^t[CLS])) / 2   (B, K)

Each fusion layer runs twice per tower (query pass, fusion pass): the extra cost PMF pays for
its deep-only prompting. Trainable: the six prompt types, the two mappers per step, the two
heads; everything else is frozen. Defaults as in the official file: F = 2, n_qp = n_qcp = n_fcp
= 4.

Where the reconstruction chooses (the official file is ambiguous or wrong there):

* The fusion-context prompts train. The official ``grad_control`` adds them to the trainable
  modules only ``if hasattr(self, 'fcp')``, an attribute that never exists, so they stay frozen at
  their random initialisation there; the paper describes them as learnable.
* The fusion layers are addressed as L-F+j. The official file uses the loop variable left over
  from the unimodal loop plus j+1, which is the same layer when F < L and undefined when F = L.
* ``n_fcp = 0`` works (no fusion-context prompts); the official forward fails on it.
* Text padding is masked with the dtype's minimum rather than -10000 (same softmax), and the
  prompts' mask columns are ones, as in the official file; no token-type ids (all zero there too).
* Towers of different depth are aligned from the top, like MITP; the official file assumes equal
  depths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mitp.errors import ConfigError
from mitp.models.mitp import CLS_ROW, MITPOutput, TwoTowers


@dataclass
class PMFConfig:
    kind: str = "pmf"  # written into a trained model's card: what rebuilds it (mitp.models.kinds)
    num_labels: int = 3  # K
    multi_label: bool = False
    n_fusion_layers: int = 2  # F
    n_qp: int = 4
    n_qcp: int = 4
    n_fcp: int = 4
    mapper_hidden: int | None = None  # h; None: max(d_v, d_t) // 2 as in the official file
    prompt_init_std: float = 0.02

    @classmethod
    def from_params(cls, params, num_labels: int, multi_label: bool) -> PMFConfig:
        p = params.model.pmf
        return cls(num_labels=num_labels, multi_label=multi_label, n_fusion_layers=p.n_fusion_layers,
                   n_qp=p.n_qp, n_qcp=p.n_qcp, n_fcp=p.n_fcp, mapper_hidden=p.mapper_hidden,
                   prompt_init_std=params.model.prompt_init_std)


def _prompts(steps: int, n: int, width: int, std: float) -> nn.ParameterList:
    """One (n, width) prompt per fusion step, ~ N(0, std^2)."""
    return nn.ParameterList([nn.Parameter(torch.randn(n, width) * std) for _ in range(steps)])


def _mappers(steps: int, d_in: int, hidden: int, d_out: int) -> nn.ModuleList:
    """The official ``MLP_adapter``: Linear -> ReLU -> Linear, one per fusion step."""
    return nn.ModuleList([nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))
                          for _ in range(steps)])


class PMF(TwoTowers):
    PARTS = ("prompts", "mappers", "head")

    def __init__(self, config: PMFConfig, vision: nn.Module, text: nn.Module, drop_below: int | None = None):
        super().__init__(vision, text, config.multi_label, drop_below=drop_below)
        self.config = config
        F = config.n_fusion_layers
        if not 1 <= F <= self.depth:
            raise ConfigError(f"model.pmf.n_fusion_layers: {F} must be between 1 and the backbone depth {self.depth}")
        self.first_interaction = self.depth - F  # the cache may hold hidden states up to here
        self.layers_i = list(range(self.first_interaction, self.depth))
        d_v, d_t, std = self.vision.width, self.text.width, config.prompt_init_std
        hidden = config.mapper_hidden or max(d_v, d_t) // 2

        self.prompt_query_v2t = _prompts(F, config.n_qp, d_v, std)
        self.prompt_context_v2t = _prompts(F, config.n_qcp, d_v, std)
        self.prompt_query_t2v = _prompts(F, config.n_qp, d_t, std)
        self.prompt_context_t2v = _prompts(F, config.n_qcp, d_t, std)
        self.prompt_fusion_v = _prompts(F, config.n_fcp, d_v, std)
        self.prompt_fusion_t = _prompts(F, config.n_fcp, d_t, std)
        self.mappers = nn.ModuleDict({"v2t": _mappers(F, d_v, hidden, d_t), "t2v": _mappers(F, d_t, hidden, d_v)})
        self.head = nn.ModuleDict({"v": nn.Linear(d_v, config.num_labels), "t": nn.Linear(d_t, config.num_labels)})

    def forward(
        self,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        hidden_v: Tensor | None = None,
        hidden_t: Tensor | None = None,
        start_layer: int = 0,
        labels: Tensor | None = None,
        return_prompts: bool = False,  # accepted for a uniform call; PMF has no generated prompts
    ) -> MITPOutput:
        """Same inputs and output as :meth:`mitp.models.mitp.MITP.forward`."""
        x_v, x_t, start_layer = self.start(attention_mask, pixel_values, input_ids, hidden_v, hidden_t, start_layer)
        c, B = self.config, x_v.shape[0]
        ones = attention_mask.new_ones
        mask_t = self.text.additive_mask(attention_mask, x_t.dtype)
        mask_query = self.text.additive_mask(torch.cat([attention_mask, ones(B, c.n_qcp + c.n_qp)], 1), x_t.dtype)
        mask_fusion = self.text.additive_mask(torch.cat([attention_mask, ones(B, c.n_fcp + c.n_qp)], 1), x_t.dtype)

        def batch(prompt: Tensor, like: Tensor) -> Tensor:  # (n, d) -> (B, n, d)
            return prompt.expand(B, -1, -1).to(like.dtype)

        for l in range(start_layer, self.first_interaction):  # unimodal base layers
            x_v = self.vision.layer(l + self.offset_v, x_v)
            x_t = self.text.layer(l + self.offset_t, x_t, mask_t)
        for j, l in enumerate(self.layers_i):
            lv, lt = l + self.offset_v, l + self.offset_t
            n_v, n_t = x_v.shape[1], x_t.shape[1]
            # query: each tower reads itself through its query prompts (only their rows are computed)
            seq_v = torch.cat([x_v, batch(self.prompt_context_v2t[j], x_v), batch(self.prompt_query_v2t[j], x_v)], 1)
            seq_t = torch.cat([x_t, batch(self.prompt_context_t2v[j], x_t), batch(self.prompt_query_t2v[j], x_t)], 1)
            q_v = self.vision.layer_rows(lv, seq_v, slice(seq_v.shape[1] - c.n_qp, None))
            q_t = self.text.layer_rows(lt, seq_t, slice(seq_t.shape[1] - c.n_qp, None), mask_query)
            # map: the queries cross to the other tower's width
            g_v2t = self.mappers["v2t"][j](q_v)  # (B, n_qp, d_t)
            g_t2v = self.mappers["t2v"][j](q_t)  # (B, n_qp, d_v)
            # fusion: the same layer again, with the other modality's queries appended (the last
            # layer computes CLS alone: the heads read nothing else)
            rows_v, rows_t = (CLS_ROW, CLS_ROW) if l == self.depth - 1 else (slice(0, n_v), slice(0, n_t))
            x_v = self.vision.layer_rows(lv, torch.cat([x_v, batch(self.prompt_fusion_v[j], x_v), g_t2v], 1), rows_v)
            x_t = self.text.layer_rows(lt, torch.cat([x_t, batch(self.prompt_fusion_t[j], x_t), g_v2t], 1), rows_t,
                                       mask_fusion)

        logits = (self.head["v"](self.vision.cls(x_v).float()) + self.head["t"](self.text.cls(x_t).float())) / 2
        loss = None if labels is None else self.loss(logits, labels)
        return MITPOutput(logits=logits, loss=loss)
