"""AffectNet (Table 2) and SpeechCNN (Table 1), each rebuilt from a small dims dataclass.

Both are plain nn.Modules; the checkpoint stores their dims beside the weights so that
`build_*` recreates them from the checkpoint alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

# Table 1 as stated: ("conv", depth, kernel) with ReLU, or ("pool",) = 2x2 max-pool; then FC sizes.
SPEECH_PRESETS: dict[str, dict] = {
    "paper": {
        "layers": [("conv", 32, 7), ("pool",), ("conv", 64, 7), ("pool",), ("conv", 128, 5), ("conv", 256, 5),
                   ("pool",), ("conv", 512, 3), ("conv", 512, 3), ("pool",)],
        "fc": [1024, 512, 128, 64],
        "padding": "valid",
    },
    # Same pattern, scaled for 99 x 64 log-mel input (the CPU demo and tests); "same" padding
    # keeps it valid for any feature size D >= 8.
    "small": {
        "layers": [("conv", 16, 5), ("pool",), ("conv", 32, 3), ("pool",), ("conv", 64, 3), ("pool",)],
        "fc": [128, 64],
        "padding": "same",
    },
}


@dataclass(frozen=True)
class AffectNetDims:
    contour_len: int = 50  # 2 s at 25 Hz
    channels: tuple[int, ...] = (32, 16, 8)
    kernel: int = 3
    k: int = 4
    dropout: float = 0.1


class AffectNet(nn.Module):
    """1-D CNN over a contour: latent (8-dim) for k-means, and a k-way cluster classifier.

    (B, 50) -> conv3 x 32 -> conv3 x 16 -> conv3 x 8 (valid, ReLU, dropout) -> (B, 8, 44)
    -> mean over time -> latent (B, 8) -> FC -> logits (B, k).
    Table 2 leaves the time axis of the 8 channels open; global average pooling reduces it
    so the latent is the 8-dim vector the paper clusters.
    """

    def __init__(self, dims: AffectNetDims = AffectNetDims()):
        super().__init__()
        self.dims = dims
        layers, in_ch = [], 1
        for out_ch in dims.channels:
            layers += [nn.Conv1d(in_ch, out_ch, dims.kernel), nn.ReLU(), nn.Dropout(dims.dropout)]
            in_ch = out_ch
        self.encoder = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, dims.k)

    def encode(self, contours: torch.Tensor) -> torch.Tensor:
        """(B, 50) -> latent (B, 8)."""
        return self.encoder(contours.unsqueeze(1)).mean(dim=2)

    def forward(self, contours: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 50) -> (logits (B, k), latent (B, 8))."""
        latent = self.encode(contours)
        return self.classifier(latent), latent


@dataclass(frozen=True)
class SpeechCNNDims:
    n_frames: int = 99  # 20 ms frames per 2 s window
    dim: int = 1024  # feature size D (1024 for Wav2Vec2 Large, n_mels for log-mel)
    k: int = 4
    preset: str = "paper"


class SpeechCNN(nn.Module):
    """2-D CNN + FC head over a (99, D) feature map, predicting the cluster label.

    Features are standardised per dimension with the training set's statistics (buffers
    saved in the checkpoint), then treated as a 1-channel image (B, 1, 99, D).
    With the `paper` preset on 99 x 1024 the valid convolutions give 93x1018x32 -> pool
    46x509 -> 40x503x64 -> 20x251 -> 16x247x128 -> 12x243x256 -> 6x121 -> 4x119x512 ->
    2x117x512 -> pool 1x58x512 = 29696 features into FC 1024-512-128-64-k. Table 1 prints
    other shapes after layer 5 (128 channels after a 64-channel conv, 2x59 and 1x29 at the
    end), which do not follow from its own kernels; we keep its layer list and compute the
    shapes, so the flattened size is derived here, never hard-coded.
    """

    def __init__(self, dims: SpeechCNNDims = SpeechCNNDims()):
        super().__init__()
        if dims.preset not in SPEECH_PRESETS:
            raise ValueError(f"unknown SpeechCNN preset {dims.preset!r}; expected one of {sorted(SPEECH_PRESETS)}")
        self.dims = dims
        preset = SPEECH_PRESETS[dims.preset]
        layers, in_ch = [], 1
        for spec in preset["layers"]:
            if spec[0] == "conv":
                layers += [nn.Conv2d(in_ch, spec[1], spec[2], padding=preset["padding"]), nn.ReLU()]
                in_ch = spec[1]
            else:
                layers.append(nn.MaxPool2d(2))
        self.conv = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.conv(torch.zeros(1, 1, dims.n_frames, dims.dim)).numel()
        fc, in_size = [], flat
        for size in preset["fc"]:
            fc += [nn.Linear(in_size, size), nn.LeakyReLU()]
            in_size = size
        fc.append(nn.Linear(in_size, dims.k))
        self.fc = nn.Sequential(*fc)
        self.register_buffer("feature_mean", torch.zeros(dims.dim))
        self.register_buffer("feature_std", torch.ones(dims.dim))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-dimension statistics (D,) of the training features, used to standardise inputs."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-5))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 99, D) -> logits (B, k)."""
        if features.shape[1:] != (self.dims.n_frames, self.dims.dim):
            raise ValueError(
                f"SpeechCNN expects features (B, {self.dims.n_frames}, {self.dims.dim}), got {tuple(features.shape)}"
            )
        x = (features - self.feature_mean) / self.feature_std
        return self.fc(self.conv(x.unsqueeze(1)).flatten(1))


def dims_to_dict(dims: AffectNetDims | SpeechCNNDims) -> dict:
    return asdict(dims)


def affect_dims_from_dict(data: dict) -> AffectNetDims:
    return AffectNetDims(**{**data, "channels": tuple(data["channels"])})
