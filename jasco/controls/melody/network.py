"""The deepsalience "multif0" network in torch, and its loader for the published Keras weights.

The network (Bittner et al., ISMIR 2017; MIT-licensed weights in a Keras HDF5 file) maps a
log-magnitude harmonic CQT `[B, 6, 360, F]` (`jasco.audio.hcqt`) to a pitch salience
`[B, 360, F]` at ~86 frames/s; `jasco.controls.melody.extraction` turns that into the melody
condition (docs/MODEL.md, "Melody").

Shapes: `B` batch, `H` harmonics (6), `K` CQT bins (360), `F` HCQT frames (22050 / 256 per
second).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

SALIENCE_SAMPLE_RATE = 22050
SALIENCE_HOP = 256
SALIENCE_FMIN = 32.7
SALIENCE_BINS_PER_OCTAVE = 60
SALIENCE_N_BINS = 360
# The published pipeline resamples with the integer 86, not 22050 / 256 = 86.13.
SALIENCE_FRAME_RATE = 86
BN_EPS = 1e-3
# (name, kernel (freq, time), in channels, out channels); every conv but the last is
# followed by ReLU and a batch-norm.
LAYERS: tuple[tuple[str, tuple[int, int], int, int], ...] = (
    ("bendy1", (5, 5), 6, 128),
    ("bendy2", (5, 5), 128, 64),
    ("smoothy1", (3, 3), 64, 64),
    ("smoothy2", (3, 3), 64, 64),
    ("distribute", (70, 3), 64, 8),
    ("squishy", (1, 1), 8, 1),
)
# Frames each side that a chunk needs so that its interior equals the unchunked output.
TIME_CONTEXT = sum(k[1] // 2 for _, k, _, _ in LAYERS) + 1


def tf_same_padding(kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """TensorFlow 'same' padding for stride 1, as `F.pad` order (left, right, top, bottom).

    The odd extra row/column goes at the end (right/bottom), as in TensorFlow.
    """
    kh, kw = kernel
    top, left = (kh - 1) // 2, (kw - 1) // 2
    return (left, kw - 1 - left, top, kh - 1 - top)


class SameConv2d(nn.Conv2d):
    """`nn.Conv2d` with stride 1 and TensorFlow 'same' padding (asymmetric when the kernel is even)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int]):
        super().__init__(in_channels, out_channels, kernel, padding=0)
        self.same_pad = tf_same_padding(kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`[B, C_in, K, F]` → `[B, C_out, K, F]`."""
        return super().forward(F.pad(x, self.same_pad))


class MultiF0Salience(nn.Module):
    """The deepsalience multif0 network: HCQT `[B, 6, 360, F]` → salience in [0, 1] `[B, 360, F]`."""

    def __init__(self):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(LAYERS[0][2], eps=BN_EPS)
        self.convs = nn.ModuleDict({name: SameConv2d(cin, cout, k) for name, k, cin, cout in LAYERS})
        self.norms = nn.ModuleDict(
            {name: nn.BatchNorm2d(cout, eps=BN_EPS) for name, _, _, cout in LAYERS[:-1]}
        )
        self.eval()

    def forward(self, hcqt: torch.Tensor) -> torch.Tensor:
        """`[B, 6, 360, F]` log-HCQT (see `log_hcqt`) → `[B, 360, F]` salience."""
        if hcqt.dim() != 4 or hcqt.shape[1] != LAYERS[0][2]:
            raise ValueError(f"MultiF0Salience expects [B, 6, K, F] input, got {tuple(hcqt.shape)}.")
        x = self.input_norm(hcqt)
        for name, _, _, _ in LAYERS[:-1]:
            x = self.norms[name](torch.relu(self.convs[name](x)))
        return torch.sigmoid(self.convs["squishy"](x))[:, 0]

    @classmethod
    def from_keras_h5(cls, path: str | Path) -> MultiF0Salience:
        """Build the network and load `multif0.h5` weights (see `load_keras_h5`)."""
        model = cls()
        model.load_keras_h5(path)
        return model

    def load_keras_h5(self, path: str | Path) -> None:
        """Load the weights of deepsalience's Keras HDF5 file, checking every layer's shapes.

        Keras stores convolution kernels `[kh, kw, in, out]` (torch: `[out, in, kh, kw]`) and each
        batch-norm as gamma, beta, moving_mean, moving_variance. The anonymous batch-norms
        (`batch_normalization_<n>`) are matched by their order in the file's `layer_names`.
        """
        layers = _read_keras_h5(Path(path))
        bn_names = [name for name in layers if name.startswith("batch_normalization")]
        conv_names = [name for name, _, _, _ in LAYERS]
        missing = [name for name in conv_names if name not in layers]
        if missing or len(bn_names) != len(LAYERS):
            raise ValueError(
                f"{path}: not a deepsalience multif0 weight file: expected conv layers {conv_names} "
                f"and {len(LAYERS)} batch-norm layers, found layers {list(layers)}."
            )
        norms = [self.input_norm] + [self.norms[name] for name, _, _, _ in LAYERS[:-1]]
        with torch.no_grad():
            for bn_name, norm in zip(bn_names, norms):
                gamma, beta, mean, var = _weights_by_suffix(
                    path, bn_name, layers[bn_name], ("gamma", "beta", "moving_mean", "moving_variance")
                )
                for value, target in zip((gamma, beta, mean, var),
                                         (norm.weight, norm.bias, norm.running_mean, norm.running_var)):
                    _check_shape(path, bn_name, value, (target.numel(),))
                    target.copy_(value)
            for name, kernel_size, cin, cout in LAYERS:
                kernel, bias = _weights_by_suffix(path, name, layers[name], ("kernel", "bias"))
                _check_shape(path, name, kernel, (*kernel_size, cin, cout))
                _check_shape(path, name, bias, (cout,))
                self.convs[name].weight.copy_(kernel.permute(3, 2, 0, 1))  # → [out, in, kh, kw]
                self.convs[name].bias.copy_(bias)
        self.eval()


def _read_keras_h5(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Layer name → {weight name → tensor} from a Keras (2.x) HDF5 weight or model file."""
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            "Reading deepsalience weights needs h5py: pip install 'jasco[melody]'."
        ) from exc
    if not path.is_file():
        raise FileNotFoundError(f"Salience weights not found: {path} (expected deepsalience multif0.h5).")
    try:
        with h5py.File(path, "r") as f:
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" not in group.attrs:
                raise ValueError("no 'layer_names' attribute")
            layers: dict[str, dict[str, torch.Tensor]] = {}
            for raw in group.attrs["layer_names"]:
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                names = group[name].attrs.get("weight_names", [])
                weights = {}
                for w in names:
                    w = w.decode() if isinstance(w, bytes) else str(w)
                    weights[w] = torch.from_numpy(group[name][w][()]).float()
                layers[name] = weights
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(
            f"{path}: cannot read Keras HDF5 weights ({exc}); the file is corrupt or not a "
            "deepsalience .h5 — download multif0.h5 again."
        ) from exc
    return layers


def _weights_by_suffix(path: str | Path, layer: str, weights: dict[str, torch.Tensor],
                       suffixes: tuple[str, ...]) -> list[torch.Tensor]:
    """The layer's weights whose names end in `<suffix>:0`, in the order of `suffixes`."""
    out = []
    for suffix in suffixes:
        found = [v for k, v in weights.items() if k.split("/")[-1].split(":")[0] == suffix]
        if len(found) != 1:
            raise ValueError(
                f"{path}: layer '{layer}' has no single '{suffix}' weight (has {list(weights)})."
            )
        out.append(found[0])
    return out


def _check_shape(path: str | Path, layer: str, value: torch.Tensor, expected: tuple[int, ...]) -> None:
    """Raise naming the layer when a stored weight has an unexpected shape."""
    if tuple(value.shape) != tuple(expected):
        raise ValueError(
            f"{path}: layer '{layer}' has a weight of shape {tuple(value.shape)}, expected "
            f"{tuple(expected)}; this is not the deepsalience multif0 model."
        )
