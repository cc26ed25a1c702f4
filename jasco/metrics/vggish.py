"""VGGish in torch: the embedding of the model card's FAD.

The published VGGish: 0.96 s log-mel examples `[96, 64]` at 16 kHz (`jasco.metrics.log_mel`) →
four convolution blocks (64; 128; 256, 256; 512, 512 channels, 3x3 kernels, each block ending in
2x2 max pooling) → three fully connected layers (4096, 4096, 128), ReLU after each. The 128-D
vector per example is the embedding (before the PCA/quantisation post-processing, which FAD does
not use).

Weights: a torch state_dict in the torchvggish layout (`features.{0,3,6,8,11,13}.{weight,bias}`,
`embeddings.{0,2,4}.{weight,bias}`; its optional `pproc._pca_matrix` / `pproc._pca_means` are
accepted and not used), from a local path or an http(s) URL (downloaded once into
`<$JASCO_CACHE_DIR or ~/.cache/jasco>/vggish`). Without weights the metric is unavailable.

Shapes: `B` examples, `F` frames (96), `M` mel bands (64), `D` = 128.
"""
from __future__ import annotations

import urllib.parse
from pathlib import Path

import torch
from torch import nn

from jasco.environment import download_dir
from jasco.metrics.availability import MetricUnavailable
from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.log_mel import SAMPLE_RATE, examples, log_mel
from jasco.safe_load import check_safe_torch_load

VGGISH_WEIGHTS_KEY = "evaluate.metrics.fad.weights"
CONV_CHANNELS = (64, "pool", 128, "pool", 256, 256, "pool", 512, 512, "pool")
FC_SIZES = (4096, 4096, 128)
POSTPROCESSING_KEYS = ("pproc._pca_matrix", "pproc._pca_means")


class VGGishNetwork(nn.Module):
    """The VGGish network; parameter names follow torchvggish so its state_dicts load as they are."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for item in CONV_CHANNELS:
            if item == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
                channels = int(item)
        self.features = nn.Sequential(*layers)
        fc: list[nn.Module] = []
        width = 512 * 6 * 4  # 96 x 64 halved four times
        for size in FC_SIZES:
            fc += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        self.embeddings = nn.Sequential(*fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-mel examples `[B, 1, 96, 64]` -> embeddings `[B, 128]`."""
        x = self.features(x)  # [B, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # [B, 6 * 4 * 512] in TensorFlow's (H, W, C) order
        return self.embeddings(x)


def resolve_vggish_weights(weights: str | Path) -> Path:
    """A local path, or an http(s) URL downloaded once into the jasco cache's `vggish` folder."""
    text = str(weights)
    url = urllib.parse.urlparse(text)
    if url.scheme not in ("http", "https"):
        return Path(text).expanduser()
    target = download_dir("vggish") / (Path(url.path).name or "vggish.pth")
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:  # writes a temporary file and renames it: no truncated file on failure
            torch.hub.download_url_to_file(text, str(target), progress=False)
        except Exception as err:  # network errors come in many types
            raise MetricUnavailable("fad", f"cannot download the VGGish weights from {text} ({err}); "
                                           f"download them by hand and set {VGGISH_WEIGHTS_KEY} "
                                           "to the file.") from err
    return target


def load_vggish(weights: str | Path | None) -> VGGishNetwork:
    """VGGish with weights from a torchvggish state_dict file (path or URL), in eval mode.

    Raises:
        MetricUnavailable: no weights given, or the file is missing.
        ValueError: the file is not a VGGish state_dict (names the missing/unexpected keys).
    """
    if weights is None:
        raise MetricUnavailable("fad", "the VGGish embedding needs its weights (a torchvggish "
                                       f"state_dict, e.g. vggish-10086976.pth): set {VGGISH_WEIGHTS_KEY} "
                                       "to its path or URL, or use embedding 'mel' for a "
                                       "download-free (not comparable) FAD.")
    path = resolve_vggish_weights(weights)
    if not path.is_file():
        raise MetricUnavailable("fad", f"VGGish weights {path} do not exist; set {VGGISH_WEIGHTS_KEY} "
                                       "to the torchvggish state_dict file.")
    check_safe_torch_load()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"VGGish weights {path} hold a {type(state).__name__}, not a state_dict.")
    network = VGGishNetwork()
    state = {k: v for k, v in state.items() if k not in POSTPROCESSING_KEYS}
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"VGGish weights {path} are not a torchvggish state_dict: missing keys "
                         f"{missing[:5]}, unexpected keys {unexpected[:5]}, wrong shapes {wrong[:5]}.")
    network.load_state_dict(state)
    return network.eval()


class VGGishEmbedding(AudioEmbedding):
    """VGGish embeddings `[B, 128]`, one per non-overlapping 0.96 s of audio."""

    name = "vggish"
    sample_rate = SAMPLE_RATE

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64) -> None:
        self.weights = str(weights)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.network = load_vggish(weights).to(self.device)

    @property
    def identity(self) -> str:
        """`vggish:<weights>`."""
        return f"{self.name}:{self.weights}"

    def embed_mono(self, wav: torch.Tensor) -> torch.Tensor:
        """`[B, 128]` for mono 16 kHz audio `[N]` (no example for clips under 0.96 s)."""
        batch = examples(log_mel(wav))[:, None]  # [B, 1, 96, 64]
        out = [self.network(batch[i:i + self.batch_size].to(self.device)).cpu()
               for i in range(0, batch.shape[0], self.batch_size)]
        return torch.cat(out) if out else torch.zeros(0, 128)
