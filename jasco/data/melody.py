"""Melody salience for the published JASCO melody models: deepsalience "multif0" in torch.

Pipeline (JASCO_SPEC §7): audio → 22050 Hz mono → harmonic CQT (`jasco.data.hcqt`) → the
multif0 network (Bittner et al., ISMIR 2017; MIT-licensed weights in a Keras HDF5 file) → a
`[360, F]` salience at ~86 frames/s → post-processing to a binary `[53, T]` matrix at 50 frames/s
(one row per semitone, MIDI 43 … 95, at most one active row per frame).

Shapes: `B` batch, `H` harmonics (6), `K` CQT bins (360), `F` HCQT frames (22050 / 256 per
second), `T` output frames (50 per second), `N` samples.
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jasco.data.hcqt import HARMONICS, cqt_frequencies, harmonic_cqt, log_hcqt

SALIENCE_SAMPLE_RATE = 22050
SALIENCE_HOP = 256
SALIENCE_FMIN = 32.7
SALIENCE_BINS_PER_OCTAVE = 60
SALIENCE_N_BINS = 360
# The published pipeline resamples with the integer 86, not 22050 / 256 = 86.13.
SALIENCE_FRAME_RATE = 86
OUTPUT_FRAME_RATE = 50
N_MELODY_BINS = 53
G2_HZ = 97.999
# With fmin 32.7 Hz (not C1 = 32.703 Hz) the G2 row sits at 97.989 Hz, 0.18 cent below G2_HZ; a
# literal `f < G2_HZ` would silence every G2 note. A row counts as "below G2" only when it is more
# than this many bins below it (set 0.0 for the literal comparison).
G2_TOLERANCE_BINS = 0.5
VOICING_THRESHOLD = 0.5
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


def run_salience_network(model: MultiF0Salience, hcqt: torch.Tensor,
                         device: torch.device | str | None = None, chunk_frames: int = 2580) -> torch.Tensor:
    """Apply the network to a long log-HCQT `[6, K, F]` in overlapping time chunks → `[K, F]` (CPU).

    Each chunk (default ~30 s) carries `TIME_CONTEXT` extra frames each side, so the result equals a
    single pass while memory stays bounded. The model is moved to `device` (default: where it is).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    n_frames = hcqt.shape[-1]
    out = torch.empty(hcqt.shape[1], n_frames, dtype=torch.float32)
    with torch.no_grad():
        for t0 in range(0, n_frames, chunk_frames):
            t1 = min(t0 + chunk_frames, n_frames)
            a, b = max(0, t0 - TIME_CONTEXT), min(n_frames, t1 + TIME_CONTEXT)
            piece = hcqt[None, :, :, a:b].to(device, torch.float32)
            out[:, t0:t1] = model(piece)[0, :, t0 - a:t1 - a].float().cpu()
    return out


def salience_to_melody(salience: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
    """Post-process a deepsalience output `[360, F]` (86 fps) into a binary melody `[53, T]` (50 fps).

    Steps (JASCO_SPEC §7): values < 0.5 → 0; rows below G2 → 0 (see `G2_TOLERANCE_BINS`); keep
    the rows from the one nearest G2 (so group `k` below is centred on MIDI 43 + k); prepend 2 zero
    rows; trim to a multiple of 5 rows; max over groups of 5 → 53 rows; linear interpolation in
    time, output frame `j` (time `j / 50`) reading input position `j * 86 / 50` (the integer 86 of
    the published pipeline; positions past the last input frame read zeros); crop or zero-pad to
    `n_frames` (default `floor((F - 1) * 50 / 86) + 1`); keep only each frame's argmax as a 1
    (all-zero frames stay 0).
    """
    if salience.dim() != 2 or salience.shape[0] != SALIENCE_N_BINS:
        raise ValueError(f"salience_to_melody expects [{SALIENCE_N_BINS}, F], got {tuple(salience.shape)}.")
    sal = torch.where(salience >= VOICING_THRESHOLD, salience, torch.zeros_like(salience)).float()
    freqs = cqt_frequencies(SALIENCE_N_BINS, SALIENCE_FMIN, SALIENCE_BINS_PER_OCTAVE)
    sal[freqs < G2_HZ * 2.0 ** (-G2_TOLERANCE_BINS / SALIENCE_BINS_PER_OCTAVE)] = 0.0
    start = int(torch.argmin((freqs - G2_HZ).abs()))
    sal = torch.cat([sal.new_zeros(2, sal.shape[1]), sal[start:]], dim=0)
    sal = sal[: (sal.shape[0] // 5) * 5]
    sal = sal.view(-1, 5, sal.shape[1]).amax(dim=1)  # [rows / 5, F]: one row per semitone
    if sal.shape[0] != N_MELODY_BINS:
        raise AssertionError(f"post-processing produced {sal.shape[0]} rows instead of {N_MELODY_BINS}")
    sal = resample_frames(sal, SALIENCE_FRAME_RATE, OUTPUT_FRAME_RATE, n_frames)
    return one_hot_argmax(sal)


def resample_frames(x: torch.Tensor, rate_in: float, rate_out: float,
                    n_frames: int | None = None) -> torch.Tensor:
    """Linear time interpolation of `[D, F]`: output frame j reads input position `j * rate_in / rate_out`."""
    n_in = x.shape[-1]
    if n_frames is None:
        n_frames = int(math.floor((n_in - 1) * rate_out / rate_in)) + 1 if n_in > 0 else 0
    pos = torch.arange(n_frames, dtype=torch.float64) * (rate_in / rate_out)
    lo = pos.floor().long()
    frac = (pos - lo).to(x.dtype)
    padded = torch.cat([x, x.new_zeros(x.shape[0], 2)], dim=-1)  # zeros past the end
    lo = lo.clamp(max=n_in + 1)
    hi = (lo + 1).clamp(max=n_in + 1)
    return padded[:, lo] * (1 - frac) + padded[:, hi] * frac


def one_hot_argmax(x: torch.Tensor) -> torch.Tensor:
    """`[D, T]` → binary `[D, T]` with a 1 at each frame's argmax; frames that are all zero stay zero."""
    out = torch.zeros_like(x)
    voiced = x.amax(dim=0) > 0
    idx = x.argmax(dim=0)
    out[idx[voiced], torch.nonzero(voiced).squeeze(-1)] = 1.0
    return out


def resolve_weights(weights: str | Path) -> Path:
    """A local path, or an http(s) URL downloaded once into `$JASCO_CACHE_DIR` (default ~/.cache/jasco)."""
    text = str(weights)
    if urllib.parse.urlparse(text).scheme not in ("http", "https"):
        return Path(text).expanduser()
    cache = Path(os.environ.get("JASCO_CACHE_DIR", Path.home() / ".cache" / "jasco")) / "deepsalience"
    name = Path(urllib.parse.urlparse(text).path).name or "multif0.h5"
    target = cache / name
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as dst, urllib.request.urlopen(text, timeout=60) as src:
            shutil.copyfileobj(src, dst)
        os.replace(tmp, target)  # atomic, so a failed download never leaves a truncated file
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(f"Could not download salience weights from {text}: {exc}") from exc
    return target


def extract_salience(
    wav: torch.Tensor,
    sample_rate: int,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
    model: MultiF0Salience | None = None,
) -> torch.Tensor:
    """Binary melody salience `[53, T]` at 50 frames/s (row k = MIDI 43 + k) of mono or multichannel audio.

    `T = ceil(duration * 50)` with `duration = N / sample_rate`: the published conditioners align
    melody to the latent frames by cropping/zero-padding, and the codec yields `ceil(N * 50 / sr)`
    frames for `N` samples.

    Args:
        wav: audio `[N]` or `[C, N]` (channels are averaged) at `sample_rate`.
        sample_rate: sample rate of `wav`; resampled to 22050 Hz with julius.
        weights: path or http(s) URL of deepsalience `multif0.h5` (unused when `model` is given).
        device: where the network runs (e.g. 'cuda'); default: the model's device, or CPU.
        model: an already loaded network, to avoid re-reading the weights for every file.

    Returns:
        float32 `[53, T]` on CPU with at most one 1 per frame.
    """
    if wav.dim() == 2:
        wav = wav.mean(dim=0)
    elif wav.dim() != 1:
        raise ValueError(f"extract_salience expects audio of shape [N] or [C, N], got {tuple(wav.shape)}.")
    if wav.numel() == 0:
        raise ValueError("extract_salience got an empty waveform (0 samples).")
    if model is None:
        if weights is None:
            raise ValueError(
                "extract_salience needs `weights` (path or URL of multif0.h5) or a loaded `model`."
            )
        model = MultiF0Salience.from_keras_h5(resolve_weights(weights))
        device = device if device is not None else "cpu"
    n_out = math.ceil(wav.shape[-1] * OUTPUT_FRAME_RATE / sample_rate)
    wav = wav.detach().to("cpu", torch.float32)
    if sample_rate != SALIENCE_SAMPLE_RATE:
        import julius

        wav = julius.resample_frac(wav, sample_rate, SALIENCE_SAMPLE_RATE)
    mag = harmonic_cqt(wav, SALIENCE_SAMPLE_RATE, SALIENCE_HOP, SALIENCE_FMIN, SALIENCE_BINS_PER_OCTAVE,
                       SALIENCE_N_BINS // SALIENCE_BINS_PER_OCTAVE, HARMONICS)
    salience = run_salience_network(model, log_hcqt(mag), device=device)
    return salience_to_melody(salience, n_frames=n_out)
