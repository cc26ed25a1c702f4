"""Text conditioners: the T5 encoder of the published models and a cheap hashed one for debugging.

Shapes: `B` batch, `S` tokens (padded to the longest text of the batch), `E` encoder width,
`D` output width.
"""
from __future__ import annotations

import logging
import re
import zlib
from typing import Any

import torch
from torch import nn

from jasco import environment
from jasco import hub
from jasco.modules.conditioners.base import BaseConditioner, ConditionTensor

logger = logging.getLogger(__name__)

# Hidden sizes of the usual T5 encoders, so a model can be built (e.g. on the meta device)
# without downloading the encoder first.
T5_DIMS = {
    "t5-small": 512, "t5-base": 768, "t5-large": 1024, "t5-3b": 1024, "t5-11b": 1024,
    "google/flan-t5-small": 512, "google/flan-t5-base": 768, "google/flan-t5-large": 1024,
    "google-t5/t5-small": 512, "google-t5/t5-base": 768, "google-t5/t5-large": 1024,
}


_T5_LOCAL_FIX = "set conditioners.description.t5.name=DIR"


def drop_words(text: str, p: float, generator: torch.Generator | None = None) -> str:
    """Keep each word of `text` with probability `1 - p` (training-time word dropout)."""
    words = text.split(" ")
    keep = torch.rand(len(words), generator=generator) >= p
    return " ".join(w for w, k in zip(words, keep.tolist()) if k)


def normalize_text(text: str) -> str:
    """Lower-case and strip punctuation (the optional `normalize_text` of the published config)."""
    return re.sub(r"[^\w\s]", " ", text.lower()).strip()


class _TextConditioner(BaseConditioner):
    """Shared text handling: word dropout, normalisation, empty/None → one masked token."""

    kind = "text"

    def __init__(self, output_dim: int, word_dropout: float = 0.0, normalize_text: bool = False):
        super().__init__(output_dim)
        self.word_dropout = word_dropout
        self.normalize_text = normalize_text

    def _prepare(self, texts: list[str | None]) -> tuple[list[str], list[bool]]:
        prepared, empty = [], []
        for text in texts:
            text = text or ""
            if self.normalize_text:
                text = normalize_text(text)
            if self.training and self.word_dropout > 0 and text:
                text = drop_words(text, self.word_dropout)
            prepared.append(text)
            empty.append(text == "")
        return prepared, empty


class Unregistered:
    """Holds a module outside the module tree of the `nn.Module` it is an attribute of.

    `nn.Module.__setattr__` registers every `nn.Module` attribute as a submodule, which puts its
    weights in `state_dict()` (so in checkpoints and exports), in `parameters()` (so optimizers,
    EMA, FSDP, parameter counts) and under `.train()`/`.half()`. A frozen pretrained encoder is an
    external dependency of a model, not part of it: wrapped in this plain object it is none of
    those. The owner moves it to its own device explicitly (see `T5Conditioner._apply`).
    """

    __slots__ = ("module",)

    def __init__(self, module: Any = None) -> None:
        self.module = module


class T5Conditioner(_TextConditioner):
    """Frozen (by default) T5 encoder + `Linear(E → D)` projection, masked at padding.

    The encoder is loaded lazily on first use, from a Hugging Face name or a local directory, and
    read through `encoder`. Frozen (the published setting), it is held in an `Unregistered`:
    it is not in `state_dict()` (published checkpoints do not contain it) nor in `parameters()`,
    stays in eval mode, and follows the conditioner's device (`.to()`, `.cuda()`; not its dtype).
    With `finetune=True` it is a registered submodule `t5`, trained and saved with the model.
    """

    def __init__(self, name: str, output_dim: int, finetune: bool = False, word_dropout: float = 0.0,
                 normalize_text: bool = False, cache_dir: str | None = None, encoder_dim: int | None = None):
        super().__init__(output_dim, word_dropout, normalize_text)
        self.name, self.finetune = name, finetune
        self.cache_dir = cache_dir or environment.cache_dir()
        self.encoder_dim = encoder_dim or self._encoder_dim(name, self.cache_dir)
        self.output_proj = nn.Linear(self.encoder_dim, output_dim)
        self._frozen_encoder = Unregistered()  # the frozen encoder, outside the module tree
        self.t5_tokenizer: Any = None
        if finetune:
            self._load()

    @staticmethod
    def _encoder_dim(name: str, cache_dir: str | None = None) -> int:
        if name in T5_DIMS:
            return T5_DIMS[name]
        from transformers import AutoConfig
        try:
            config = hub.from_hub(
                lambda local_only: AutoConfig.from_pretrained(name, cache_dir=cache_dir, local_files_only=local_only),
                name, what="the config of text encoder", cache=cache_dir, local_fix=_T5_LOCAL_FIX)
            return config.d_model
        except OSError as exc:
            raise RuntimeError(f"Cannot read the config of text encoder {name!r}: give a known T5 name "
                               f"({', '.join(sorted(T5_DIMS))}) or a local directory with config.json") from exc

    def _load(self) -> None:
        """Load tokenizer and encoder: offline or with an unreachable hub, from the cache only, and
        an encoder that is not there raises `hub.HubUnavailableError` at once."""
        from transformers import AutoTokenizer, T5EncoderModel
        try:
            tokenizer = hub.from_hub(
                lambda local_only: AutoTokenizer.from_pretrained(self.name, cache_dir=self.cache_dir,
                                                                 local_files_only=local_only),
                self.name, what="the T5 text encoder", cache=self.cache_dir, local_fix=_T5_LOCAL_FIX)
            model = hub.from_hub(
                lambda local_only: T5EncoderModel.from_pretrained(self.name, cache_dir=self.cache_dir,
                                                                  local_files_only=local_only),
                self.name, what="the T5 text encoder", cache=self.cache_dir, local_fix=_T5_LOCAL_FIX)
        except OSError as exc:
            raise RuntimeError(
                f"Could not load the T5 text encoder {self.name!r}. Offline, download it on a machine "
                f"with internet (`huggingface-cli download {self.name} --local-dir DIR`) and set "
                f"conditioners.description.t5.name=DIR.") from exc
        self.set_encoder(model.to(self.device), tokenizer)

    @property
    def encoder(self) -> Any:
        """The T5 encoder (None until loaded): the `t5` submodule when fine-tuned, else the frozen one."""
        return self._modules.get("t5") if self.finetune else self._frozen_encoder.module

    def set_encoder(self, encoder: Any, tokenizer: Any) -> None:
        """Use `encoder` and `tokenizer` instead of loading `name` (also what `_load` does).

        `encoder(input_ids=, attention_mask=)` must return an object with `.last_hidden_state`
        `[B, S, E]`, e.g. a `T5EncoderModel`; `tokenizer` is called like a Hugging Face tokenizer.
        """
        if self.finetune:
            self.t5 = encoder  # registered: in state_dict() and parameters()
        else:
            if isinstance(encoder, nn.Module):
                encoder.eval().requires_grad_(False)
            self._frozen_encoder.module = encoder
        self.t5_tokenizer = tokenizer

    def tokenize(self, values: list[str | None]) -> dict[str, torch.Tensor]:
        """Texts → `{'input_ids': [B, S], 'attention_mask': [B, S]}`; empty texts fully masked."""
        if self.t5_tokenizer is None:
            self._load()
        texts, empty = self._prepare(values)
        inputs = self.t5_tokenizer(texts, return_tensors="pt", padding=True)
        mask = inputs["attention_mask"]
        mask[torch.tensor(empty, dtype=torch.bool)] = 0
        return {"input_ids": inputs["input_ids"].to(self.device), "attention_mask": mask.to(self.device)}

    def encode(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run the T5 encoder: `[B, S]` ids → hidden states `[B, S, E]`."""
        if self.encoder is None:
            self._load()
        with torch.set_grad_enabled(self.finetune and self.training):
            return self.encoder(**tokens).last_hidden_state

    def project(self, hidden: torch.Tensor, mask: torch.Tensor) -> ConditionTensor:
        """`hidden [B, S, E]`, `mask [B, S]` → `(output_proj(hidden) * mask [B, S, D], mask)`."""
        out = self.output_proj(hidden.to(self.output_proj.weight))
        return out * mask[..., None].to(out.dtype), mask

    def forward(self, tokens: dict[str, torch.Tensor]) -> ConditionTensor:
        """Tokens → `([B, S, D], mask [B, S])`."""
        return self.project(self.encode(tokens), tokens["attention_mask"])

    def _apply(self, fn: Any, recurse: bool = True):
        """`nn.Module._apply` (behind `.to()`, `.cuda()`, ...), then the frozen encoder to our device."""
        super()._apply(fn, recurse)
        encoder = self._frozen_encoder.module
        if isinstance(encoder, nn.Module):
            self._frozen_encoder.module = encoder.to(self.output_proj.weight.device)
        return self


class HashedTextConditioner(_TextConditioner):
    """A cheap text conditioner for debugging: words hashed into a learned lookup table.

    No download, no encoder: each lower-cased word maps to `crc32(word) % num_buckets` (+1; 0 is
    padding), embedded, then projected to `D`. It learns the captions of a small dataset well
    enough to check that text conditioning flows through training and generation.
    """

    def __init__(self, output_dim: int, num_buckets: int = 2048, dim: int = 64, max_tokens: int = 32,
                 word_dropout: float = 0.0, normalize_text: bool = True):
        super().__init__(output_dim, word_dropout, normalize_text)
        self.num_buckets, self.max_tokens = num_buckets, max_tokens
        self.embedding = nn.Embedding(num_buckets + 1, dim, padding_idx=0)
        self.output_proj = nn.Linear(dim, output_dim)

    def _ids(self, text: str) -> list[int]:
        words = text.lower().split()[: self.max_tokens]
        return [zlib.crc32(w.encode()) % self.num_buckets + 1 for w in words] or [0]

    def tokenize(self, values: list[str | None]) -> dict[str, torch.Tensor]:
        """Texts → `{'input_ids': [B, S], 'attention_mask': [B, S]}`."""
        texts, empty = self._prepare(values)
        ids = [self._ids(t) for t in texts]
        length = max(len(i) for i in ids)
        input_ids = torch.zeros(len(ids), length, dtype=torch.long)
        for row, (i, is_empty) in enumerate(zip(ids, empty)):
            input_ids[row, : len(i)] = torch.tensor(i)
        mask = (input_ids > 0).long()
        return {"input_ids": input_ids.to(self.device), "attention_mask": mask.to(self.device)}

    def forward(self, tokens: dict[str, torch.Tensor]) -> ConditionTensor:
        """Tokens → `([B, S, D], mask [B, S])`."""
        mask = tokens["attention_mask"]
        out = self.output_proj(self.embedding(tokens["input_ids"]))
        return out * mask[..., None].to(out.dtype), mask
