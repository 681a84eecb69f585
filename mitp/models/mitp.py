"""MITP: memory-inspired temporal prompt interaction between a frozen ViT and a frozen BERT.

Reads top to bottom like docs/design.md, "The model". Notation: modality m in {v, t}; frozen layer
f_l^m; X_l^m the tokens entering layer l (B x N_m x d_m); M the prompt length; h the hub size;
interaction layers I = {s, s+D, s+2D, ...} below L.

    acquire:     [X_{l+1}^m ; O_l^m] = f_l^m([X_l^m ; P_l^m])        (prompts live one layer)
    encode:      Z^m = LN_m(O_l^m) W_in^m + e_l
    consolidate: S = tau * cos(Z^v, Z^t);  C^v = softmax_rows(S) Z^t;  C^t = softmax_rows(S^T) Z^v
    activate:    P_next^m = O_l^m + W_out^m GELU([Z^m ; C^m])       (W_out zero-initialised)
    readout:     [CLS_v ; CLS_t ; mean_M O_last^v ; mean_M O_last^t] -> LN -> dropout -> Linear(K)

Variants: ``mitp``; ``mitp_no_hub`` (C^m = 0: no exchange between modalities);
``late_fusion`` (no prompts; [CLS_v ; CLS_t] -> LN -> dropout -> Linear(K)); ``finetune`` (the
late-fusion readout with both towers trainable end to end: the upper bound, never cached).
PMF, the prompt-based baseline, lives in :mod:`mitp.models.pmf` on the same :class:`TwoTowers` base;
:func:`mitp.models.kinds.build_model` picks the class for ``model.kind``.

The forward pass can start from raw inputs (embeddings) or from hidden states entering layer
k <= s (the feature cache): layers below s never see a prompt, so both give the same logits.
A model built with ``drop_below=k`` for the cached path never runs the embeddings or the layers
below k, so it does not keep them: their modules are replaced (weights released).
Towers of different depth are aligned from the top: aligned layer l is layer l + (L_m - L) of
tower m, with L the depth of the shallower tower.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mitp.config.params import MODEL_KINDS
from mitp.errors import ConfigError


@dataclass
class MITPConfig:
    kind: str = "mitp"  # mitp | mitp_no_hub | late_fusion | finetune
    prompt_length: int = 8  # M
    hub_size: int = 64  # h
    start: int = 0  # s
    interval: int = 1  # D
    num_labels: int = 3  # K
    multi_label: bool = False
    dropout: float = 0.1
    tau_init: float = 1.0 / 0.07
    prompt_init_std: float = 0.02

    @classmethod
    def from_params(cls, params, num_labels: int, multi_label: bool) -> MITPConfig:
        m = params.model
        return cls(kind=m.kind, prompt_length=m.prompt_length, hub_size=m.hub_size,
                   start=m.interaction.start, interval=m.interaction.interval, num_labels=num_labels,
                   multi_label=multi_label, dropout=m.dropout, tau_init=m.tau_init,
                   prompt_init_std=m.prompt_init_std)


@dataclass
class MITPOutput:
    logits: Tensor  # (B, K)
    loss: Tensor | None = None  # scalar, when labels were given
    prompts_v: list[Tensor] | None = None  # P_l^v for each l in I, (B, M, d_v) each (for inspection)
    prompts_t: list[Tensor] | None = None


CLS_ROW = slice(0, 1)  # the rows of a last plain layer the readout reads


def interaction_layers(start: int, interval: int, depth: int) -> list[int]:
    """I = {s, s+D, ...} below the depth L; validated so a bad config names its key."""
    if start >= depth:
        raise ConfigError(f"model.interaction.start: {start} must be below the backbone depth {depth}")
    return list(range(start, depth, interval))


# --------------------------------------------------------------------------------------------
# Frozen towers: a uniform layer-by-layer view of HF ViT and BERT
# --------------------------------------------------------------------------------------------


def attend(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float, mask: Tensor | None,
           dropout: float) -> Tensor:
    """Multi-head attention of projected queries (B, R, d) over keys/values (B, N, d) -> (B, R, d);
    ``mask``: additive, broadcastable to (B, heads, R, N)."""
    B, R, d = q.shape
    split = lambda t: t.view(B, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask, dropout_p=dropout, scale=scale)
    return out.transpose(1, 2).reshape(B, R, d)


class VisionTower(nn.Module):
    """ViT as embed -> layers -> final layernorm. No attention mask (all patches are real)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.layers = vit.layers
        self.depth = len(vit.layers)
        self.width = vit.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vit.layernorm.weight.dtype

    def embed(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> X_0^v (B, 1 + patches, d_v)."""
        return self.vit.embeddings(pixel_values.to(self.dtype))

    def layer(self, i: int, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.layers[i](x)

    def layer_rows(self, i: int, x: Tensor, rows: slice | list[int], mask: Tensor | None = None) -> Tensor:
        """``layer(i, x)[:, rows]`` without computing the other rows: their queries, attention
        outputs and MLP are skipped (keys and values still come from every token). The last layer
        only needs CLS and the prompts' outputs."""
        layer = self.layers[i]
        att = getattr(layer, "attention", None)
        if not all(hasattr(att, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):  # another ViT layout
            return layer(x)[:, rows]
        h = layer.layernorm_before(x)  # pre-LN: y = x + attn(LN(x)); out = y + MLP(LN(y))
        # the rows as fresh (aligned) tensors: a matmul on a view at an offset may round differently
        a = attend(att.q_proj(h[:, rows].contiguous()), att.k_proj(h), att.v_proj(h), att.num_attention_heads,
                   att.scaling, None, att.attention_dropout if att.training else 0.0)
        y = x[:, rows].contiguous() + layer.dropout(att.o_proj(a))
        return y + layer.dropout(layer.mlp(layer.layernorm_after(y)))

    def cls(self, x: Tensor) -> Tensor:
        """CLS_v after the ViT's final layernorm."""
        return self.vit.layernorm(x[:, 0])

    def drop_below(self, n: int) -> None:
        """Release the embeddings and layers 0..n-1 (never run when training from the cache)."""
        self.vit.embeddings = None
        for i in range(n):
            self.layers[i] = nn.Identity()


class TextTower(nn.Module):
    """BERT as embed -> layers; CLS_t is the first token of the last layer."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert
        self.layers = bert.encoder.layer
        self.depth = len(bert.encoder.layer)
        self.width = bert.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[-1].output.dense.weight.dtype

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, N_t) -> X_0^t (B, N_t, d_t)."""
        return self.bert.embeddings(input_ids=input_ids)

    def layer(self, i: int, x: Tensor, mask: Tensor | None = None) -> Tensor:
        # BertLayer does not build its mask: it wants a 4-D additive (B, 1, 1, N) mask.
        return self.layers[i](x, attention_mask=mask)

    def layer_rows(self, i: int, x: Tensor, rows: slice | list[int], mask: Tensor | None = None) -> Tensor:
        """``layer(i, x, mask)[:, rows]`` without computing the other rows (see VisionTower)."""
        layer = self.layers[i]
        att = getattr(getattr(layer, "attention", None), "self", None)
        if not all(hasattr(att, n) for n in ("query", "key", "value")):  # another BERT layout
            return layer(x, attention_mask=mask)[:, rows]
        x_r = x[:, rows].contiguous()  # post-LN: a = LN(x + attn(x)); out = LN(a + FFN(a))
        a = attend(att.query(x_r), att.key(x), att.value(x), att.num_attention_heads, att.scaling, mask,
                   att.dropout.p if att.training else 0.0)
        a = layer.attention.output(a, x_r)
        return layer.output(layer.intermediate(a), a)

    @staticmethod
    def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, N) of 1 (keep) / 0 (pad) -> (B, 1, 1, N) of 0 / dtype-min."""
        keep = attention_mask[:, None, None, :].to(dtype)
        return (1.0 - keep) * torch.finfo(dtype).min

    def cls(self, x: Tensor) -> Tensor:
        return x[:, 0]

    def drop_below(self, n: int) -> None:
        """Release the embeddings and layers 0..n-1 (never run when training from the cache)."""
        self.bert.embeddings = None
        for i in range(n):
            self.layers[i] = nn.Identity()


# --------------------------------------------------------------------------------------------
# Memory hub: encode, consolidate (two-way similarity), activate (next prompts)
# --------------------------------------------------------------------------------------------


class MemoryHub(nn.Module):
    """One hub shared by all interaction layers; ``exchange=False`` is the ``mitp_no_hub`` ablation."""

    def __init__(self, d_v: int, d_t: int, h: int, n_steps: int, tau_init: float, exchange: bool = True):
        super().__init__()
        self.exchange = exchange
        self.norm_v, self.norm_t = nn.LayerNorm(d_v), nn.LayerNorm(d_t)
        self.w_in_v, self.w_in_t = nn.Linear(d_v, h), nn.Linear(d_t, h)
        self.layer_emb = nn.Parameter(torch.zeros(n_steps, h))  # e_l, one per hub step
        if exchange:
            # tau is learnt in log space (positive, scale-free steps), initialised to 1/0.07 as in CLIP.
            self.log_tau = nn.Parameter(torch.tensor(math.log(tau_init)))
        # Without exchange C^m = 0: tau and the half of W_out reading C could never learn, so they
        # are not built (and not counted); W_out reads Z alone, the same function as [Z ; 0].
        width = 2 * h if exchange else h
        self.w_out_v, self.w_out_t = nn.Linear(width, d_v), nn.Linear(width, d_t)
        for w in (self.w_out_v, self.w_out_t):  # training starts from plain prompt carry-over
            nn.init.zeros_(w.weight)
            nn.init.zeros_(w.bias)
        nn.init.normal_(self.layer_emb, std=0.02)

    def forward(self, o_v: Tensor, o_t: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """O_l^v (B, M, d_v), O_l^t (B, M, d_t) -> P_next^v, P_next^t (same shapes)."""
        z_v = self.w_in_v(self.norm_v(o_v)) + self.layer_emb[step]  # (B, M, h)
        z_t = self.w_in_t(self.norm_t(o_t)) + self.layer_emb[step]
        if not self.exchange:  # C^m = 0, and GELU(0) = 0: W_out reads Z alone
            return o_v + self.w_out_v(F.gelu(z_v)), o_t + self.w_out_t(F.gelu(z_t))
        tau = self.log_tau.exp().clamp(max=100.0)
        s = tau * F.normalize(z_v, dim=-1) @ F.normalize(z_t, dim=-1).transpose(1, 2)  # (B, M, M)
        c_v = s.softmax(dim=-1) @ z_t  # each vision slot reads the text slots
        c_t = s.transpose(1, 2).softmax(dim=-1) @ z_v  # and each text slot the vision slots
        p_v = o_v + self.w_out_v(F.gelu(torch.cat([z_v, c_v], dim=-1)))
        p_t = o_t + self.w_out_t(F.gelu(torch.cat([z_t, c_t], dim=-1)))
        return p_v, p_t


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class TwoTowers(nn.Module):
    """What every kind shares: the two towers aligned from the top, frozen unless
    ``train_backbones``; the frozen prefix the cache stores; the start from raw inputs or from
    hidden states entering layer k; the loss.

    Subclasses set ``first_interaction`` (the first aligned layer that differs from the plain
    frozen towers: hidden states may enter at most there) and ``PARTS`` (trainable groups).

    ``drop_below=k`` (the cached path): the embeddings and the layers below aligned layer k are
    released at construction. The passed backbone modules are changed in place: that is what
    frees their weights, so callers that keep using the full towers pass a copy.
    """

    PARTS: tuple[str, ...] = ("head",)

    def __init__(self, vision: nn.Module, text: nn.Module, multi_label: bool,
                 train_backbones: bool = False, drop_below: int | None = None):
        super().__init__()
        self.multi_label = multi_label
        self.train_backbones = train_backbones
        self.vision, self.text = VisionTower(vision), TextTower(text)
        for p in list(vision.parameters()) + list(text.parameters()):
            p.requires_grad_(train_backbones)
        self.depth = min(self.vision.depth, self.text.depth)  # L, towers aligned from the top
        self.offset_v = self.vision.depth - self.depth
        self.offset_t = self.text.depth - self.depth
        self.first_interaction = self.depth
        self.dropped_below = drop_below
        if drop_below is not None:
            if train_backbones:
                raise ConfigError("cache.enabled: a model that trains its backbones cannot start from the cache")
            self.vision.drop_below(drop_below + self.offset_v)
            self.text.drop_below(drop_below + self.offset_t)

    # -- the frozen parts stay in eval mode whatever .train() says -----------------------------
    def train(self, mode: bool = True) -> TwoTowers:
        super().train(mode)
        if not self.train_backbones:
            self.vision.eval()
            self.text.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> dict[str, int]:
        """Trainable parameter counts by part (``PARTS``; ``prompt_*`` names are prompts)."""
        groups = dict.fromkeys(self.PARTS, 0)
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            part = "prompts" if name.startswith("prompt_") else name.split(".")[0]
            groups[part] = groups.get(part, 0) + p.numel()
        return groups

    # -- frozen prefix: what the feature cache stores -------------------------------------------
    # Each tower separately, so a cache can store an image once however many texts share it.
    def vision_prefix(self, pixel_values: Tensor, k: int) -> Tensor:
        """(B, 3, H, W) -> X_k^v (B, N_v, d_v): embeddings and frozen layers below aligned layer k."""
        x = self.vision.embed(pixel_values)
        for i in range(k + self.offset_v):
            x = self.vision.layer(i, x)
        return x

    def text_prefix(self, input_ids: Tensor, attention_mask: Tensor, k: int) -> Tensor:
        """(B, N_t) ids and mask -> X_k^t (B, N_t, d_t)."""
        x = self.text.embed(input_ids)
        mask = self.text.additive_mask(attention_mask, x.dtype)
        for i in range(k + self.offset_t):
            x = self.text.layer(i, x, mask)
        return x

    def encode_prefix(self, pixel_values: Tensor, input_ids: Tensor, attention_mask: Tensor, k: int):
        """Raw inputs -> hidden states entering aligned layer k: (B, N_v, d_v), (B, N_t, d_t)."""
        return self.vision_prefix(pixel_values, k), self.text_prefix(input_ids, attention_mask, k)

    def start(self, attention_mask: Tensor, pixel_values: Tensor | None, input_ids: Tensor | None,
              hidden_v: Tensor | None, hidden_t: Tensor | None, start_layer: int) -> tuple[Tensor, Tensor, int]:
        """(X_k^v, X_k^t, k): from raw inputs (k = 0) or from cached hidden states entering k."""
        if hidden_v is None:
            if self.dropped_below is not None:
                raise ConfigError(f"cache.enabled: this model was built without its layers below "
                                  f"{self.dropped_below} and can only run cached hidden states")
            x_v, x_t = self.encode_prefix(pixel_values, input_ids, attention_mask, 0)
            return x_v, x_t, 0
        if start_layer > self.first_interaction:
            raise ConfigError(f"cache.layer: hidden states enter layer {start_layer}, above the "
                              f"first interaction layer {self.first_interaction}")
        if self.dropped_below is not None and start_layer < self.dropped_below:
            raise ConfigError(f"cache.layer: hidden states enter layer {start_layer}, below the "
                              f"first layer kept ({self.dropped_below})")
        return hidden_v.to(self.vision.dtype), hidden_t.to(self.text.dtype), start_layer

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(logits, labels)


class MITP(TwoTowers):
    """MITP and the kinds that share its readout: ``mitp``, ``mitp_no_hub``, ``late_fusion``,
    ``finetune``."""

    PARTS = ("prompts", "hub", "head")

    def __init__(self, config: MITPConfig, vision: nn.Module, text: nn.Module, drop_below: int | None = None):
        if config.kind not in ("mitp", "mitp_no_hub", "late_fusion", "finetune"):
            raise ConfigError(f"model.kind: unknown kind {config.kind!r}")
        super().__init__(vision, text, config.multi_label, train_backbones=config.kind == "finetune",
                         drop_below=drop_below)
        self.config = config
        d_v, d_t, M = self.vision.width, self.text.width, config.prompt_length

        self.prompted = MODEL_KINDS[config.kind] == "interaction"
        if self.prompted:
            self.layers_i = interaction_layers(config.start, config.interval, self.depth)
            self.first_interaction = config.start
            # first prompts P_s^m ~ N(0, 0.02^2)
            self.prompt_v = nn.Parameter(torch.randn(M, d_v) * config.prompt_init_std)
            self.prompt_t = nn.Parameter(torch.randn(M, d_t) * config.prompt_init_std)
            n_steps = len(self.layers_i) - 1  # the hub runs after each l in I but the last
            if n_steps == 0:
                warnings.warn(f"model.interaction: a single interaction layer (I = {self.layers_i}) runs no hub, "
                              "so mitp and mitp_no_hub are the same model", UserWarning, stacklevel=2)
            self.hub = (MemoryHub(d_v, d_t, config.hub_size, n_steps, config.tau_init,
                                  exchange=config.kind == "mitp") if n_steps > 0 else None)
            readout_dim = 2 * (d_v + d_t)
        else:
            self.layers_i, self.hub = [], None
            readout_dim = d_v + d_t
        self.head = nn.Sequential(nn.LayerNorm(readout_dim), nn.Dropout(config.dropout),
                                  nn.Linear(readout_dim, config.num_labels))

    def read_rows(self, n: int) -> list[int]:
        """The rows of the last (prompted) layer the readout reads: CLS, and the M prompts after
        the ``n`` tokens."""
        return [0, *range(n, n + self.config.prompt_length)]

    # -- the forward pass ------------------------------------------------------------------------
    def forward(
        self,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        hidden_v: Tensor | None = None,
        hidden_t: Tensor | None = None,
        start_layer: int = 0,
        labels: Tensor | None = None,
        return_prompts: bool = False,
    ) -> MITPOutput:
        """Logits from raw inputs (``pixel_values`` (B,3,H,W), ``input_ids`` (B,N_t)) or from
        cached hidden states entering aligned layer ``start_layer`` = k (``hidden_v``
        (B,N_v,d_v), ``hidden_t`` (B,N_t,d_t)). ``attention_mask``: (B, N_t) text mask.
        ``labels``: (B,) class indices, or (B, K) multi-hot floats for multi-label sets."""
        x_v, x_t, start_layer = self.start(attention_mask, pixel_values, input_ids, hidden_v, hidden_t, start_layer)
        B = x_v.shape[0]
        mask_t = self.text.additive_mask(attention_mask, x_t.dtype)
        # The prompts' columns of the text mask: ones (prompts are always attended to).
        mask_tp = self.text.additive_mask(
            torch.cat([attention_mask, attention_mask.new_ones(B, self.config.prompt_length)], dim=1), x_t.dtype
        ) if self.prompted else None

        p_v = p_t = o_v = o_t = None
        if self.prompted:
            p_v = self.prompt_v.expand(B, -1, -1).to(x_v.dtype)
            p_t = self.prompt_t.expand(B, -1, -1).to(x_t.dtype)
        seen_v, seen_t = [], []
        step = 0
        last = self.depth - 1
        for l in range(start_layer, self.depth):
            lv, lt = l + self.offset_v, l + self.offset_t
            if l not in self.layers_i:  # plain frozen layer (the last one: only CLS is read)
                x_v = self.vision.layer(lv, x_v) if l < last else self.vision.layer_rows(lv, x_v, CLS_ROW)
                x_t = self.text.layer(lt, x_t, mask_t) if l < last else self.text.layer_rows(lt, x_t, CLS_ROW, mask_t)
                continue
            # acquire: append the prompts, run the frozen layer on both, split again
            if return_prompts:
                seen_v.append(p_v)
                seen_t.append(p_t)
            n_v, n_t = x_v.shape[1], x_t.shape[1]
            if l < last:
                y_v = self.vision.layer(lv, torch.cat([x_v, p_v], dim=1))
                y_t = self.text.layer(lt, torch.cat([x_t, p_t], dim=1), mask_tp)
            else:  # the readout reads CLS and O only: the other rows of the last layer are never computed
                y_v = self.vision.layer_rows(lv, torch.cat([x_v, p_v], dim=1), self.read_rows(n_v))
                y_t = self.text.layer_rows(lt, torch.cat([x_t, p_t], dim=1), self.read_rows(n_t), mask_tp)
                n_v = n_t = 1
            x_v, o_v = y_v[:, :n_v], y_v[:, n_v:]
            x_t, o_t = y_t[:, :n_t], y_t[:, n_t:]
            if l != self.layers_i[-1]:  # hub: next layer's prompts from what these acquired
                p_v, p_t = self.hub(o_v, o_t, step)
                step += 1

        feats = [self.vision.cls(x_v), self.text.cls(x_t)]
        if self.prompted:
            feats += [o_v.mean(dim=1), o_t.mean(dim=1)]
        logits = self.head(torch.cat(feats, dim=-1).float())
        loss = None if labels is None else self.loss(logits, labels)
        return MITPOutput(logits=logits, loss=loss,
                          prompts_v=seen_v or None, prompts_t=seen_t or None)
