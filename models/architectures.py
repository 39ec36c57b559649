"""The networks: one encoder per modality, a fusion head, and an alignment wrapper for training.

Everything here is plain ``torch.nn`` (no torchvision/torchaudio) so that every module exports
to ONNX with fixed shapes and runs in the fusion node on onnxruntime alone. torch is used for
training and export only; the node never imports this file.

Shapes (batch ``B``; the exported bundle fixes ``B = 1``)::

    CameraEncoder  image   (B, 3, H, W) float32, normalised RGB      -> (B, D) L2-normalised
    RadarEncoder   points  (B, P, F) float32, mask (B, P) float32    -> (B, D) L2-normalised
    AudioEncoder   logmel  (B, 1, n_mels, T) float32                 -> (B, D) L2-normalised
    FusionHead     camera, radar, audio (B, D), present (B, 3)       -> logits (B, C) (masked votes),
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

from fusion_node.vocabulary import CLASSES, MODALITIES, OBSERVES, WITNESSES

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

    ``spatial_dim > 0`` keeps *where* in the embedding as a part of its own: a 1x1 convolution
    squeezes the last feature map to ``spatial_channels``, averaged into a ``spatial_grid`` x
    ``spatial_grid`` layout and projected to the last ``spatial_dim`` entries; the first
    ``embed_dim - spatial_dim`` come from the global mean as before (*what*). Each part is
    normalised and scaled by 1/sqrt(2), so both weigh the same in a cosine similarity and the
    whole stays unit length. A global mean alone forgets where things are, and a radar bound to
    the camera can then only learn what; a classifier that reads only the first part cannot learn
    a training video's layout instead of the thing in it.
    """

    def __init__(
        self,
        embed_dim: int = 128,
        *,
        stem_channels: int = 16,
        blocks: Sequence[tuple[int, int]] = ((32, 2), (64, 2), (96, 2), (128, 1)),
        spatial_dim: int = 0,
        spatial_channels: int = 8,
        spatial_grid: int = 6,
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.spatial_dim = int(spatial_dim)
        if not 0 <= self.spatial_dim < self.embed_dim:
            raise ValueError(f"CameraEncoder: spatial_dim must be within 0..{self.embed_dim - 1}, got {spatial_dim}")
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
        self.proj = nn.Linear(ch, self.embed_dim - self.spatial_dim)
        self.spatial_grid = int(spatial_grid)
        if self.spatial_dim:
            self.squeeze = nn.Sequential(nn.Conv2d(ch, int(spatial_channels), 1), nn.ReLU(inplace=True))
            self.spatial_proj = nn.Linear(int(spatial_channels) * self.spatial_grid ** 2, self.spatial_dim)
        _init_weights(self)

    @property
    def semantic_dim(self) -> int:
        """Entries of the embedding that say *what* (the first ones); the rest say where."""
        return self.embed_dim - self.spatial_dim

    @property
    def where_modules(self) -> tuple[str, ...]:
        """Names of the submodules that make the spatial part alone (empty without one)."""
        return ("squeeze", "spatial_proj") if self.spatial_dim else ()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.embed_feature_map(self.features(image))

    def embed_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding from the last feature map ``self.features(image)``, which training may compute once."""
        # Mean over H and W rather than AdaptiveAvgPool2d: same maths, and a plain ReduceMean
        # exports identically under every exporter and provider.
        what = self.proj(x.mean(dim=(2, 3)))
        if not self.spatial_dim:
            return _l2_normalise(what)
        s = self.squeeze(x)
        b, c, h, w = s.shape
        g = self.spatial_grid
        # Average pooling into g x g cells written as reshapes and means, for the same reason
        # (the feature map's side must be a multiple of g: 6 x 6 at 96 px with stride 16).
        where = self.spatial_proj(s.reshape(b, c, g, h // g, g, w // g).mean(dim=(3, 5)).flatten(1))
        return torch.cat([_l2_normalise(what), _l2_normalise(where)], dim=1) * (0.5 ** 0.5)


class RadarEncoder(nn.Module):
    """PointNet-style point-set encoder with masked max- and mean-pooling.

    Input ``points (B, P, in_features)`` (5, or 8 with image coordinates) and ``mask (B, P)`` (1 = real point, 0 = padding); output
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
    """Masked late fusion: each modality votes on the classes it can observe; the surest vote counts.

    Inputs ``camera``, ``radar``, ``audio`` ``(B, D)`` and ``present (B, 3)`` (1.0 where the
    modality's embedding is real, 0.0 where it is missing or faulty). Each modality has its own
    linear classifier over the classes (trained with its encoder, against its own teacher). Then:

    * a modality's vote counts only for the classes it observes (``observes``, by default
      :data:`fusion_node.vocabulary.OBSERVES`): the mask is part of the graph, not of training, so
      a radar can never report speech however it was trained;
    * ``logits (B, C)``: per class, the largest logit among the present modalities that observe it
      (a class nobody present can observe gets -30: probability ~1e-13). Each modality's own
      decision threshold is folded into its classifier's bias at export (logit 0 = its threshold),
      so one threshold of 0.5 serves every class and any subset of modalities;
    * ``certainty (B, 3)``: how decisive each present modality is, the mean of ``|2p - 1|`` over the
      classes it observes (0 when missing);
    * ``weights (B, 3)``: the certainties normalised over the present modalities (sum 1; all 0 with
      none present);
    * ``consistency (B, 1)``: semantic agreement in [0, 1]: one minus the largest difference in
      probability between two present modalities on a class both can vouch for (``witnesses``,
      by default :data:`fusion_node.vocabulary.WITNESSES`: camera and radar on person and vehicle).
      People on camera with people on radar and speech in the microphone agree (1.0); a radar full
      of people with an empty picture does not. 1.0 when no two present modalities share a class.
    """

    ABSENT_LOGIT = -30.0

    def __init__(self, embed_dim: int = 128, num_classes: int = len(DEFAULT_CLASSES), *,
                 classes: Sequence[str] = DEFAULT_CLASSES, observes: Mapping[str, Sequence[str]] = OBSERVES,
                 witnesses: Mapping[str, Sequence[str]] = WITNESSES) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.num_classes = int(num_classes)
        if len(classes) != self.num_classes:
            classes = tuple(f"class{k}" for k in range(self.num_classes))
        self.classifiers = nn.ModuleList(nn.Linear(embed_dim, self.num_classes) for _ in MODALITIES)
        # A class the tables do not name (a custom class list) is observed by every modality and
        # vouched for by none: the masks restrict only what is declared.
        declared = {c for cs in observes.values() for c in cs}
        open_classes = {c: MODALITIES for c in classes if c not in declared}
        self.register_buffer("observe", self._mask(classes, observes, open_classes), persistent=False)
        self.register_buffer("witness", self._mask(classes, witnesses, {}), persistent=False)
        n = len(MODALITIES)
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        self.register_buffer("_pair_i", torch.tensor([p[0] for p in pairs], dtype=torch.long), persistent=False)
        self.register_buffer("_pair_j", torch.tensor([p[1] for p in pairs], dtype=torch.long), persistent=False)
        _init_weights(self)

    @staticmethod
    def _mask(classes: Sequence[str], by_modality: Mapping[str, Sequence[str]],
              by_class: Mapping[str, Sequence[str]]) -> torch.Tensor:
        return torch.tensor([[1.0 if c in by_modality.get(m, ()) or m in by_class.get(c, ()) else 0.0
                              for c in classes] for m in MODALITIES])

    def modality_logits(self, camera: torch.Tensor, radar: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Each modality's own class logits ``(B, 3, C)``, before masking."""
        return torch.stack([clf(e) for clf, e in zip(self.classifiers, (camera, radar, audio))], dim=1)

    def forward(
        self, camera: torch.Tensor, radar: torch.Tensor, audio: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p = present.clamp(0.0, 1.0)  # (B, 3); clamping guards against callers passing e.g. 2.0
        per = self.modality_logits(camera, radar, audio)  # (B, 3, C)
        votes = p.unsqueeze(-1) * self.observe  # (B, 3, C): 1 where a present modality observes the class
        masked = per * votes + (1.0 - votes) * self.ABSENT_LOGIT
        logits = masked.amax(dim=1)

        probs = torch.sigmoid(per)
        decisive = (torch.abs(2.0 * probs - 1.0) * self.observe).sum(-1) / self.observe.sum(-1).clamp_min(1.0)
        certainty = decisive * p
        # A floor per present modality keeps the weights summing to 1 when every vote sits at 0.5.
        share = certainty + 1e-3 * p
        weights = share / share.sum(dim=1, keepdim=True).clamp_min(_EPS)

        shared = (self.witness * p.unsqueeze(-1))  # (B, 3, C)
        both = shared[:, self._pair_i] * shared[:, self._pair_j]  # (B, pairs, C)
        gap = torch.abs(probs[:, self._pair_i] - probs[:, self._pair_j]) * both
        consistency = 1.0 - gap.flatten(1).amax(dim=1, keepdim=True)
        return logits, certainty, weights, consistency

    @torch.no_grad()
    def fold_thresholds(self, thresholds: Mapping[str, Mapping[str, float]], classes: Sequence[str]) -> None:
        """Shift each modality's classifier so that its own threshold per class becomes logit 0."""
        for k, m in enumerate(MODALITIES):
            for j, c in enumerate(classes):
                t = float(thresholds.get(m, {}).get(c, 0.5))
                t = min(max(t, 1e-4), 1 - 1e-4)
                self.classifiers[k].bias[j] -= math.log(t / (1.0 - t))


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
