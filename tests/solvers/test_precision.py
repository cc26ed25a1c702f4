"""Mixed precision that changes nothing but speed, host syncs only at logging points, device defaults.

- The codec runs in float32 whatever the caller's autocast: with a random codec, where any bfloat16
  leak flips most codes, the drum codes of training (inside the solver's autocast), inference (the
  JASCO API) and the drum-code cache writer are identical.
- Silence codes (null drums) are encoded once per codec and length.
- The train loop reads nothing computed on the device between logging points (a CPU stand-in for
  CUDA's sync debug mode: a dispatch mode that follows every tensor computed from the model's
  weights and counts host reads of them); a non-finite loss is still a clear error naming the tracks.
- `autocast` / `autocast_dtype` / `num_threads` defaults follow the device (`jasco.environment`).
"""
from __future__ import annotations

import traceback

import pytest
import torch
from helpers_codec import noise_wav, tiny_codec
from helpers_training import ensure_example, experiment
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

from jasco import environment
from jasco.models.track_encoding import compute_drum_codes
from jasco.modules.conditioners import DrumsConditioner

# Drums always present in training batches (no condition dropout), bfloat16 autocast.
RUN = ["solver=jasco/debug", "autocast=true", "autocast_dtype=bfloat16", "classifier_free_guidance.training_dropout=0",
       "attribute_dropout.wav.self_wav=0", "generate.every=0", "evaluate.every=0"]


# ---------------------------------------------------------------- codec in float32
def test_codec_ignores_the_callers_autocast():
    codec = tiny_codec()
    wav = noise_wav(batch=2, num_samples=64000)
    latents, codes = codec.encode(wav), codec.encode_codes(wav)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(codec.encode(wav), latents) and torch.equal(codec.encode_codes(wav), codes)
        audio = codec.decode(latents)
        assert audio.dtype == torch.float32
    assert torch.equal(audio, codec.decode(latents))
    # The fix is needed: the same computation with bfloat16 autocast reaching the codec flips most codes.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        leaked = type(codec).codes_from_latents.__wrapped__(codec, type(codec).encode_latents.__wrapped__(codec, wav))
    assert (leaked != codes).float().mean() > 0.5


def test_drum_codes_are_identical_in_training_inference_and_cache(tmp_path, monkeypatch):
    ensure_example()
    from jasco.models.jasco import JASCO
    from jasco.train import get_solver
    seen: list[torch.Tensor] = []
    drum_codes = DrumsConditioner.drum_codes
    monkeypatch.setattr(DrumsConditioner, "drum_codes", lambda self, tokens: seen.append(drum_codes(self, tokens))
                        or seen[-1])
    # Batches of one item, as the API and the cache writer encode: float32 results depend on the batch's
    # composition in their last bits (summation order), which can flip a code at a near-tie.
    with experiment(tmp_path, RUN + ["dataset.batch_size=1"]) as xp:
        solver = get_solver(xp.cfg)
        assert solver.autocast_enabled and solver.autocast_dtype == torch.bfloat16
        infos = []
        for _, (wav, batch_infos) in zip(range(3), solver.dataloaders["train"]):
            solver.run_step((wav, batch_infos), train=True)  # conditions embedded inside the solver's autocast
            infos += batch_infos
    training = torch.cat(seen)
    assert training.shape == (3, 200)
    codec = solver.compression_model
    stems = [info.to_condition_attributes().wav["self_wav"] for info in infos]
    assert all(stem.wav is not None and stem.codes is None for stem in stems)
    api = JASCO("debug", solver.model, codec, segment_duration=xp.cfg.dataset.segment_duration)
    api.set_generation_params(euler=True, euler_steps=1, duration=xp.cfg.dataset.segment_duration)
    for i, stem in enumerate(stems):
        cache = compute_drum_codes(codec, stem.wav, stem.sample_rate)  # the drum-code cache writer
        assert torch.equal(training[i], cache), f"item {i}: {(training[i] != cache).sum()} codes differ"
        seen.clear()
        api.generate_music(["drums"], drums_wav=stem.wav, drums_sample_rate=stem.sample_rate, seed=0)
        inference = seen[0][0]  # the guidance term with the drums
        assert torch.equal(inference, cache), f"item {i}: {(inference != cache).sum()} codes differ"


# ---------------------------------------------------------------- silence codes
def test_silence_codes_are_encoded_once_per_codec_and_length(monkeypatch):
    codec = tiny_codec()
    calls = []
    encode = type(codec).encode_codes
    monkeypatch.setattr(type(codec), "encode_codes", lambda self, *a, **k: calls.append(a[0].shape) or encode(self, *a, **k))
    fresh = encode(codec, torch.zeros(1, 1, 32000))[0, 0]  # [T]
    first = codec.silence_codes(32000)[0]
    assert torch.equal(first, fresh) and len(calls) == 1
    cond = DrumsConditioner(2, codec, segment_duration=1.0).eval()
    drums = noise_wav(batch=1, num_samples=32000)[0]
    from jasco.data.attributes import WavCondition
    for _ in range(3):  # a guided generation: the drums row, then null rows
        codes = cond.drum_codes(cond.tokenize([WavCondition(drums, 32000), None, None]))
        assert torch.equal(codes[1], fresh) and torch.equal(codes[2], fresh)
    # One encoding of silence (the first call), then one of the drums per batch.
    assert len(calls) == 1 + 3 and all(shape[0] == 1 for shape in calls[1:])
    # New weights (in place, or loaded) or another length: encoded again.
    assert codec.silence_codes(16000).shape == (1, 25) and len(calls) == 5
    with torch.no_grad():
        codec.model.encoder.layers[0].conv.bias.add_(1.0)
    refreshed = codec.silence_codes(32000)
    assert len(calls) == 6 and torch.equal(refreshed, encode(codec, torch.zeros(1, 1, 32000))[0])
    assert not torch.equal(refreshed[0], fresh)


def test_cached_drum_codes_out_of_range_are_an_error_in_tokenize():
    from jasco.data.attributes import WavCondition
    cond = DrumsConditioner(2, tiny_codec(), segment_duration=1.0)
    bad = WavCondition(None, 32000, path="a/drums.wav", seek_time=1.0, codes=torch.tensor([3, 2048]))
    with pytest.raises(ValueError, match=r"drum codes \(drum codes of a/drums.wav at 1.0 s\) must lie in \[0, 2048\)"):
        cond.tokenize([bad])


# ---------------------------------------------------------------- host syncs
class DeviceReads(TorchDispatchMode):
    """Counts host reads (`.item()`, `float()`, `bool()`, `.tolist()`) of tensors computed from `roots`.

    On CUDA those tensors live on the device and each such read waits for it; on CPU nothing
    waits, so this follows them instead: every output of an op with a followed input is followed.
    """

    def __init__(self, roots: list[torch.Tensor]):
        super().__init__()
        self.followed = WeakIdKeyDictionary()
        for tensor in roots:
            self.followed[tensor] = True
        self.reads: list[str] = []

    def read(self, tensor: torch.Tensor) -> None:
        if tensor in self.followed:
            self.reads.append("".join(traceback.format_stack(limit=8)[:-2]))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default:
            self.read(args[0])
        out = func(*args, **kwargs)
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if any(a in self.followed for a in inputs):
            for o in torch.utils._pytree.tree_leaves(out):
                if isinstance(o, torch.Tensor):
                    self.followed[o] = True
        return out


def test_train_loop_reads_device_tensors_only_at_logging_points(tmp_path, monkeypatch):
    ensure_example()
    from jasco.train import get_solver
    run = RUN + ["optim.epochs=1", "optim.updates_per_epoch=4", "logging.log_updates=2", "dataset.batch_size=2"]
    with experiment(tmp_path, run) as xp:
        solver = get_solver(xp.cfg)
        roots = [*solver.model.parameters(), *solver.model.buffers()]
        mode = DeviceReads(roots)
        settled_at: list[int] = []
        settle = solver.settle_metrics
        inside = []

        def settling(*args, **kwargs):
            settled_at.append(solver.updates)
            inside.append(True)
            try:
                return settle(*args, **kwargs)
            finally:
                inside.pop()

        monkeypatch.setattr(solver, "settle_metrics", settling)
        outside: list[str] = []
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)

            def spy(self, *args, _original=original, **kwargs):
                if self in mode.followed and not inside:
                    outside.append(f"Tensor.{_original.__name__}")
                return _original(self, *args, **kwargs)
            monkeypatch.setattr(torch.Tensor, name, spy)
        read = mode.read
        mode.read = lambda tensor: None if inside else read(tensor)
        with mode:
            metrics = solver.run_stage("train", solver.train)
    assert not mode.reads and not outside, "host reads of device tensors between logging points:\n" + "\n".join(
        mode.reads[:3] + outside[:3])
    # The bar logs every 4 // (4 // 2) = 2 updates from its 0-based index 2 (after the 3rd), then the stage ends.
    assert settled_at == [3, 4]
    assert set(metrics) >= {"loss", "grad_norm", "lr", "samples_per_s"} and all(
        isinstance(v, float) for v in metrics.values())


def test_non_finite_loss_found_at_the_logging_point_names_its_tracks(tmp_path):
    ensure_example()
    from jasco.train import get_solver
    run = RUN + ["optim.epochs=1", "optim.updates_per_epoch=3", "logging.log_updates=3", "dataset.batch_size=2"]
    with experiment(tmp_path, run) as xp:
        solver = get_solver(xp.cfg)
        batches = []
        train_update = solver.train_update

        def poisoned(batches_, positions, global_batch=None):
            batches.append(batches_)
            if solver.updates == 1:  # the second update: its loss, and what follows, is NaN
                with torch.no_grad():
                    solver.model.linear.weight.fill_(float("nan"))
            return train_update(batches_, positions, global_batch)

        solver.train_update = poisoned
        with pytest.raises(FloatingPointError, match="Lower optim.lr") as caught:
            solver.run_stage("train", solver.train)
    assert len(batches) == 3  # found at the end of the logging interval, not at the bad update
    message = str(caught.value)
    assert "at update 2 " in message
    assert all(f"{info.meta.path}@{info.seek_time:.2f}s" in message for _, infos in batches[1] for info in infos)


# ---------------------------------------------------------------- device defaults
@pytest.mark.parametrize("flags, autocast, dtype, expected", [
    ({"avx512_bf16"}, "auto", "auto", torch.bfloat16),
    ({"amx_bf16"}, "auto", "auto", torch.bfloat16),
    (set(), "auto", "auto", None),
    (set(), True, "auto", torch.bfloat16),
    ({"avx512_bf16"}, False, "auto", None),
    ({"avx512_bf16"}, "auto", "float32", None),
    ({"avx512_bf16"}, "auto", "float16", torch.bfloat16),  # float16 on CPU is bfloat16...
    (set(), "auto", "float16", None),  # ...which needs native support under auto
    (set(), True, "float16", torch.bfloat16),  # published GPU recipe on CPU: bfloat16, with a warning
])
def test_autocast_on_cpu_follows_the_cpu_flags(monkeypatch, flags, autocast, dtype, expected):
    monkeypatch.setattr(environment, "_cpu_flags", lambda: flags)
    assert environment.resolve_autocast(autocast, dtype, torch.device("cpu")) == expected


@pytest.mark.parametrize("bf16, autocast, dtype, expected", [
    (True, "auto", "auto", torch.bfloat16),
    (False, "auto", "auto", torch.float16),
    (True, True, "float16", torch.float16),  # the published recipe stays reachable
    (False, "auto", "bfloat16", None),
    (True, "false", "auto", None),
])
def test_autocast_on_cuda_follows_bf16_support(monkeypatch, bf16, autocast, dtype, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    assert environment.resolve_autocast(autocast, dtype, torch.device("cuda")) == expected


def test_autocast_rejects_unknown_values():
    with pytest.raises(ValueError, match="autocast='sometimes'"):
        environment.resolve_autocast("sometimes", "auto", torch.device("cpu"))
    with pytest.raises(ValueError, match="autocast_dtype='half'"):
        environment.resolve_autocast(True, "half", torch.device("cpu"))


def test_num_threads_auto_is_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(environment.os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert environment.resolve_num_threads("auto") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert environment.resolve_num_threads("auto") == 2
    assert environment.resolve_num_threads(4) == 4 and environment.resolve_num_threads(None) is None
    with pytest.raises(ValueError, match="num_threads='many'"):
        environment.resolve_num_threads("many")
