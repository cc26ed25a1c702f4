"""CLAP (contrastive language-audio pretraining): an embedding for FAD and the text-audio score.

The model is transformers' `ClapModel` with its `ClapProcessor`, from a Hugging Face hub id
(default `laion/clap-htsat-unfused`, the checkpoint of the model card's CLAP score) or a local
folder saved with `save_pretrained`. (The `laion_clap` package is not used: it imports
torchaudio.) Audio is embedded in consecutive windows of at most 10 s at 48 kHz, the length the
model was trained on, so that no random cropping happens; the vectors are the model's normalised
audio projections.

`clap_score(wavs, sample_rate, texts)` is the mean, over pairs, of the cosine similarity between a
clip's audio embedding (the mean of its windows, renormalised) and its text's embedding.

Shapes: `N` samples, `W` windows, `D` the projection size (512 for the published model).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from jasco import hub
from jasco.environment import cache_dir
from jasco.metrics.availability import MetricUnavailable
from jasco.metrics.embedding import AudioEmbedding
from jasco.metrics.waveform import Waveform

DEFAULT_CLAP_MODEL = "laion/clap-htsat-unfused"
CLAP_SAMPLE_RATE = 48000
WINDOW_S = 10.0
MIN_TAIL_S = 1.0  # a last window shorter than this is dropped (unless it is the only one)


def _features(output: object) -> torch.Tensor:
    """Projection vectors from `get_*_features` (a tensor in transformers 4, an output in 5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClapEmbedding(AudioEmbedding):
    """CLAP audio embeddings `[W, D]`, one per window of at most 10 s."""

    name = "clap"
    sample_rate = CLAP_SAMPLE_RATE

    def __init__(self, model: str = DEFAULT_CLAP_MODEL, device: str | torch.device = "cpu") -> None:
        from transformers import ClapModel, ClapProcessor

        self.model_id = str(model)
        self.device = torch.device(device)
        where = cache_dir()
        fix = "set the CLAP model to DIR (evaluate.metrics.clap.model)"
        try:
            self.processor = hub.from_hub(lambda local: ClapProcessor.from_pretrained(
                self.model_id, local_files_only=local, cache_dir=where), self.model_id,
                "the CLAP processor", fix)
            self.model = hub.from_hub(lambda local: ClapModel.from_pretrained(
                self.model_id, local_files_only=local, cache_dir=where), self.model_id,
                "the CLAP model", fix)
        except (hub.HubUnavailableError, OSError) as err:
            raise MetricUnavailable("clap", f"cannot load CLAP model {self.model_id!r}: "
                                            f"{str(err).splitlines()[0]}") from err
        self.model = self.model.to(self.device).eval()

    @property
    def identity(self) -> str:
        """`clap:<model id or folder>`."""
        return f"{self.name}:{self.model_id}"

    def embed_mono(self, wav: torch.Tensor) -> torch.Tensor:
        """`[W, D]` for mono 48 kHz audio `[N]`."""
        size = int(WINDOW_S * CLAP_SAMPLE_RATE)
        windows = list(wav.split(size)) if wav.numel() else []
        if len(windows) > 1 and windows[-1].numel() < MIN_TAIL_S * CLAP_SAMPLE_RATE:
            windows.pop()
        if not windows:
            return torch.zeros(0, self.model.config.projection_dim)
        # A window is never longer than the model's input, so "rand_trunc" crops nothing; a
        # fused model takes its 4-channel "fusion" input.
        fused = bool(getattr(self.model.config.audio_config, "enable_fusion", False))
        inputs = self.processor.feature_extractor([w.numpy() for w in windows],
                                                  sampling_rate=CLAP_SAMPLE_RATE,
                                                  truncation="fusion" if fused else "rand_trunc",
                                                  return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        return _features(self.model.get_audio_features(**inputs)).float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text projections `[len(texts), D]`."""
        tokens = self.processor.tokenizer(list(texts), padding=True, truncation=True,
                                          return_tensors="pt")
        tokens = {k: v.to(self.device) for k, v in tokens.items()}
        with torch.no_grad():
            return F.normalize(_features(self.model.get_text_features(**tokens)).float().cpu(), dim=-1)


def clap_score(wavs: Sequence[Waveform], sample_rate: int, texts: Sequence[str],
               model: str | ClapEmbedding = DEFAULT_CLAP_MODEL) -> float:
    """Mean text-audio cosine similarity of clips `[N]` / `[C, N]` and their descriptions.

    Args:
        wavs: the clips.
        sample_rate: their sample rate.
        texts: one description per clip.
        model: a hub id or local folder of a CLAP model, or a loaded `ClapEmbedding`.

    Raises:
        MetricUnavailable: the model cannot be loaded (offline without a cached copy, ...).
        ValueError: `wavs` and `texts` differ in length, or a clip is empty.
    """
    if len(wavs) != len(texts):
        raise ValueError(f"clap_score got {len(wavs)} clips and {len(texts)} texts; give one text per clip.")
    if not wavs:
        raise ValueError("clap_score needs at least one clip.")
    embedding = model if isinstance(model, ClapEmbedding) else ClapEmbedding(model)
    audio = []
    for i, wav in enumerate(wavs):
        windows = embedding.embed(wav, sample_rate)  # [W, D]
        if windows.shape[0] == 0:
            raise ValueError(f"clap_score: clip {i} is empty.")
        audio.append(F.normalize(windows.mean(dim=0), dim=-1))
    similarity = (torch.stack(audio) * embedding.embed_texts(texts)).sum(-1)  # [len(wavs)]
    return float(similarity.mean())
