"""The debug codec has the same weights, hence the same latent-cache identity, at any torch thread count."""
from __future__ import annotations

import json
import subprocess
import sys

# Build codecs in a fresh process with a given thread count and print their identity hashes.
BUILD = r"""
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
from jasco.data.latents import codec_identity
from jasco.models.codec import EncodecCompressionModel
print(json.dumps([codec_identity(EncodecCompressionModel.debug(**kw))["state_dict_sha256"]
                  for kw in json.loads(sys.argv[2])]))
"""
CONFIGS = [{}, {"seed": 3, "num_filters": 16, "num_codebooks": 2}]


def _identities(threads: int) -> list[str]:
    out = subprocess.run([sys.executable, "-c", BUILD, str(threads), json.dumps(CONFIGS)], capture_output=True,
                         text=True, timeout=240, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_debug_codec_identity_independent_of_thread_count():
    hashes = {threads: _identities(threads) for threads in (1, 2, 4)}
    assert hashes[1] == hashes[2] == hashes[4], hashes


def test_debug_codec_identity_means_same_weights():
    import torch

    from jasco.data.latents import codec_identity, state_dict_sha256
    from jasco.models.codec import EncodecCompressionModel

    a, b = EncodecCompressionModel.debug(), EncodecCompressionModel.debug()
    assert codec_identity(a) == codec_identity(b)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    assert state_dict_sha256(EncodecCompressionModel.debug(seed=1).model) != codec_identity(a)["state_dict_sha256"]
    # Building it leaves the caller's random state alone, and its codes still depend on the input.
    state = torch.random.get_rng_state()
    EncodecCompressionModel.debug()
    assert torch.equal(state, torch.random.get_rng_state())
    wav = torch.randn(1, 1, 32000, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 1, 32000)
    assert a.encode_codes(wav).unique().numel() > 5
