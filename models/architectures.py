"""The networks: one encoder per modality, a fusion head, and an alignment wrapper for training.

Everything here is plain ``torch.nn`` (no torchvision/torchaudio) so that every module exports
to ONNX with fixed shapes and runs in the fusion node on onnxruntime alone. torch is used for
training and export only; the node never imports this file.

Shapes (batch ``B``; the exported bundle fixes ``B = 1``)::

    CameraEncoder  image   (B, 3, H, W) float32, normalised RGB      -> (B, D) L2-normalised
    RadarEncoder   points  (B, P, 5) float32, mask (B, P) float32    -> (B, D) L2-normalised
    AudioEncoder   logmel  (B, 1, n_mels, T) float32                 -> (B, D) L2-normalised
    FusionHead     camera, radar, audio (B, D), present (B, 3)       -> logits (B, C),
                                                                        certainty (B, 3),
                                                                        weights (B, 3),
                                                                        consistency (B, 1)

The inputs are exactly what :mod:`fusion_node.preprocess` produces, so training and the node
share one definition of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fusion_node.vocabulary import CLASSES, MODALITIES

__all__ = [
    "DEFAULT_CLASSES",
    "MODALITIES",
    "HEAD_INPUTS",
    "HEAD_OUTPUTS",
    "CameraEncoder",
    "RadarEncoder",
    "AudioEncoder",
    "FusionHead",
    "AlignmentModel",
]

# The head's classes unless an export names others (the vocabulary's event classes).
DEFAULT_CLASSES: tuple[str, ...] = CLASSES

HEAD_INPUTS: tuple[str, ...] = (*MODALITIES, "present")
HEAD_OUTPUTS: tuple[str, ...] = ("logits", "certainty", "weights", "consistency")

# Floor under norms and denominators: keeps an all-zero embedding (a missing modality) or an
# empty mask finite instead of 0/0 = NaN.
_EPS = 1e-12


def _init_weights(module: nn.Module) -> None:
    # Convolutions: He (Kaiming) normal init, fan_out mode as MobileNet uses, so activations keep
    # their scale through the ReLU stack; PyTorch's default init shrinks them layer by layer
    # until an untrained encoder outputs little more than its final bias. Biases start at zero
    # so every output depends on the input; BatchNorm starts as the identity.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


def _l2_normalise(x: torch.Tensor) -> torch.Tensor:
    # Embeddings live on the unit sphere so that cosine similarity is a dot product (InfoNCE)
    # and so that no modality dominates the fused sum by sheer magnitude.
    return F.normalize(x, p=2.0, dim=-1, eps=_EPS)


class _DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 conv then pointwise 1x1 conv, each followed by BatchNorm and ReLU6."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CameraEncoder(nn.Module):
    """MobileNet-style image encoder: conv stem, depthwise-separable blocks, global pool, linear.

    Input ``(B, 3, H, W)`` normalised RGB (any H, W large enough for the strides); output
    ``(B, embed_dim)`` L2-normalised. ``blocks`` lists ``(out_channels, stride)`` per block.
    """

    def __init__(
        self,
        embed_dim: int = 128,
        *,
        stem_channels: int = 16,
        blocks: Sequence[tuple[int, int]] = ((32, 2), (64, 2), (96, 2), (128, 1)),
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        layers: list[nn.Module] = [
            nn.Conv2d(3, stem_channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU6(inplace=True),
        ]
        ch = stem_channels
        for out_ch, stride in blocks:
            layers.append(_DepthwiseSeparable(ch, out_ch, stride))
            ch = out_ch
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, self.embed_dim)
        _init_weights(self)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image)
        # Mean over H and W rather than AdaptiveAvgPool2d: same maths, and a plain ReduceMean
        # exports identically under every exporter and provider.
        x = x.mean(dim=(2, 3))
        return _l2_normalise(self.proj(x))


class RadarEncoder(nn.Module):
    """PointNet-style point-set encoder with masked max- and mean-pooling.

    Input ``points (B, P, 5)`` and ``mask (B, P)`` (1 = real point, 0 = padding); output
    ``(B, embed_dim)`` L2-normalised. A shared MLP embeds every point independently, so the
    result does not depend on point order; padding never contributes. An all-zero mask (a
    frame with no detections) gives a finite embedding, never NaN.
    """

    def __init__(self, embed_dim: int = 128, *, in_features: int = 5, hidden: Sequence[int] = (64, 128)) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        layers: list[nn.Module] = []
        ch = in_features
        for h in hidden:
            layers += [nn.Linear(ch, h), nn.ReLU(inplace=True)]
            ch = h
        # The MLP must end in a ReLU: masked max-pooling below relies on features being >= 0.
        self.point_mlp = nn.Sequential(*layers)
        self.proj = nn.Linear(2 * ch, self.embed_dim)
        _init_weights(self)

    def forward(self, points: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        feats = self.point_mlp(points)  # (B, P, F), every entry >= 0 (ReLU)
        m = mask.unsqueeze(-1)  # (B, P, 1)
        masked = feats * m
        # Features are non-negative, so zeroing padded points cannot raise the max above a real
        # point's value; with no real points the max is 0 (finite) instead of -inf.
        pooled_max = masked.amax(dim=1)
        # Mean over real points only; the clamp keeps an empty frame at 0/1 = 0, not 0/0.
        count = m.sum(dim=1).clamp_min(1.0)
        pooled_mean = masked.sum(dim=1) / count
        return _l2_normalise(self.proj(torch.cat([pooled_max, pooled_mean], dim=-1)))


class AudioEncoder(nn.Module):
    """Small CNN over a log-mel spectrogram: conv blocks with pooling, global pool, linear.

    Input ``(B, 1, n_mels, T)``; output ``(B, embed_dim)`` L2-normalised.
    """

    def __init__(self, embed_dim: int = 128, *, channels: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        # Log-mel values sit around log(1e-6) ~ -14 for silence and a few units for loud sound;
        # a BatchNorm on the single input channel learns that offset and scale during training
        # instead of hard-coding dataset statistics into preprocessing.
        layers: list[nn.Module] = [nn.BatchNorm2d(1)]
        ch = 1
        for i, out_ch in enumerate(channels):
            layers += [
                nn.Conv2d(ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            # Pool after all but the last block; 3 halvings keep a 64-mel input at >= 8 bins.
            if i < len(channels) - 1:
                layers.append(nn.MaxPool2d(2))
            ch = out_ch
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(ch, self.embed_dim)
        _init_weights(self)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.features(logmel).mean(dim=(2, 3))
        return _l2_normalise(self.proj(x))


class FusionHead(nn.Module):
    """Gated late fusion of the three modality embeddings into multi-label event logits.

    Inputs ``camera``, ``radar``, ``audio`` ``(B, D)`` and ``present (B, 3)`` (1.0 where the
    modality's embedding is real, 0.0 where it is missing and the embedding is a placeholder,
    normally zeros). Returns the tuple ``(logits, certainty, weights, consistency)``:

    * ``logits (B, C)``: multi-label event logits (apply a sigmoid per class).
    * ``certainty (B, 3)``: in [0, 1]; a per-modality sigmoid MLP on that modality's embedding,
      multiplied by ``present`` so a missing modality reports 0.
    * ``weights (B, 3)``: the gate. A learned score per modality, softmaxed over the *present*
      modalities only: a missing modality gets exactly 0, the present ones sum to 1, and with
      none present all weights are 0 (no NaN).
    * ``consistency (B, 1)``: cross-modal agreement, the mean cosine similarity over pairs of
      present modalities, each pair weighted by ``w_i * w_j + 1e-6`` (the small constant keeps
      the mean defined when the gate puts almost all weight on one modality; it then tends to the
      unweighted mean). In [-1, 1]; near 1 when the modalities agree. With fewer than two present
      modalities nothing can disagree, so it is defined as exactly 1.0; consumers that need to
      tell "agree" from "only one sensor" read ``present`` or ``weights``.

    The fused representation is ``sum_m weights_m * embedding_m``; an MLP maps it to logits.
    """

    def __init__(self, embed_dim: int = 128, num_classes: int = len(DEFAULT_CLASSES), *, hidden: int = 128) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_classes = int(num_classes)
        n = len(MODALITIES)
        # Separate small MLPs per modality: what makes a camera embedding trustworthy is not
        # what makes an audio one trustworthy.
        certainty_hidden = max(8, hidden // 4)
        self.certainty_mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, certainty_hidden), nn.ReLU(inplace=True), nn.Linear(certainty_hidden, 1))
            for _ in range(n)
        )
        self.gate_scores = nn.ModuleList(nn.Linear(embed_dim, 1) for _ in range(n))
        self.classifier = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, self.num_classes),
        )
        # Upper-triangular pair indices (0,1), (0,2), (1,2) for the pairwise consistency.
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        self.register_buffer("_pair_i", torch.tensor([p[0] for p in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("_pair_j", torch.tensor([p[1] for p in pairs], dtype=torch.long), persistent=False)
        _init_weights(self)

    def forward(
        self, camera: torch.Tensor, radar: torch.Tensor, audio: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = torch.stack([camera, radar, audio], dim=1)  # (B, 3, D)
        # Treat present as a 0/1 gate; clamping guards against callers passing e.g. 2.0.
        p = present.clamp(0.0, 1.0)  # (B, 3)

        certainty = torch.cat(
            [torch.sigmoid(mlp(emb[:, k])) for k, mlp in enumerate(self.certainty_mlps)], dim=1
        ) * p

        scores = torch.cat([g(emb[:, k]) for k, g in enumerate(self.gate_scores)], dim=1)  # (B, 3)
        # Masked softmax. Missing scores are pushed far down so they never set the max, and the
        # exponentials are multiplied by p so a missing modality's weight is exactly 0 (not just
        # tiny). Every exponent is <= 0, so exp() <= 1 and 0 * exp() is never inf * 0 = NaN.
        masked_scores = scores * p - (1.0 - p) * 1e4
        shifted = masked_scores - masked_scores.amax(dim=1, keepdim=True)
        expd = torch.exp(shifted) * p
        # All missing: expd is all 0, the clamp makes it 0 / eps = 0 rather than 0 / 0.
        weights = expd / expd.sum(dim=1, keepdim=True).clamp_min(_EPS)

        fused = (weights.unsqueeze(-1) * emb).sum(dim=1)  # (B, D)
        logits = self.classifier(fused)

        consistency = self._consistency(emb, p, weights)
        return logits, certainty, weights, consistency

    def _consistency(self, emb: torch.Tensor, p: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # Normalise here too: the encoders already do, but the head must not assume its inputs
        # are unit vectors (a zero placeholder stays zero and has cosine 0 with everything).
        unit = _l2_normalise(emb)
        ei = unit[:, self._pair_i]  # (B, 3 pairs, D)
        ej = unit[:, self._pair_j]
        cos = (ei * ej).sum(dim=-1)  # (B, 3 pairs)
        both = p[:, self._pair_i] * p[:, self._pair_j]  # 1 where both members are present
        pair_w = both * (weights[:, self._pair_i] * weights[:, self._pair_j] + 1e-6)
        mean_cos = (pair_w * cos).sum(dim=1, keepdim=True) / pair_w.sum(dim=1, keepdim=True).clamp_min(_EPS)
        has_pair = both.sum(dim=1, keepdim=True).clamp(0.0, 1.0)  # 0 when < 2 modalities present
        return has_pair * mean_cos + (1.0 - has_pair)


class AlignmentModel(nn.Module):
    """The three encoders plus a learnable InfoNCE temperature, for contrastive pre-training.

    ``log_temperature`` is learned in log space so the temperature stays positive and its
    gradient scale does not depend on its magnitude. :meth:`similarity` returns the scaled
    cosine-similarity matrix that an InfoNCE loss takes as logits. Only the encoders are
    exported; the temperature is a training-time quantity.
    """

    # Bounds on the temperature: below ~0.01 the logits explode and training diverges; above 1
    # the loss can no longer separate positives from negatives.
    MIN_TEMPERATURE = 0.01
    MAX_TEMPERATURE = 1.0

    def __init__(self, encoders: Mapping[str, nn.Module], init_temperature: float = 0.07) -> None:
        super().__init__()
        unknown = set(encoders) - set(MODALITIES)
        if unknown:
            raise ValueError(f"AlignmentModel: unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        if not (self.MIN_TEMPERATURE <= init_temperature <= self.MAX_TEMPERATURE):
            raise ValueError(
                f"AlignmentModel: init_temperature must be in [{self.MIN_TEMPERATURE}, {self.MAX_TEMPERATURE}], "
                f"got {init_temperature}"
            )
        self.encoders = nn.ModuleDict(dict(encoders))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_temperature), dtype=torch.float32))

    @property
    def temperature(self) -> torch.Tensor:
        """The current temperature, clamped to [MIN_TEMPERATURE, MAX_TEMPERATURE]."""
        return self.log_temperature.exp().clamp(self.MIN_TEMPERATURE, self.MAX_TEMPERATURE)

    def encode(self, modality: str, *inputs: torch.Tensor) -> torch.Tensor:
        """Embed one modality's preprocessed inputs with its encoder."""
        if modality not in self.encoders:
            raise ValueError(f"AlignmentModel: no encoder for modality {modality!r}; have {sorted(self.encoders)}")
        return self.encoders[modality](*inputs)

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``(Na, D) x (Nb, D) -> (Na, Nb)`` cosine similarities divided by the temperature."""
        return (_l2_normalise(a) @ _l2_normalise(b).T) / self.temperature
