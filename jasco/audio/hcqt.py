"""Harmonic constant-Q transform (HCQT), the input representation of the deepsalience models.

A constant-Q bin `k` of centre frequency `f_k` is the correlation of the signal with a complex
exponential at `f_k` under a Hann window of `L_k = Q * sr / f_k` samples (L1-normalised), sampled
every `hop` samples and scaled by `sqrt(L_k)`: the same definition and scaling as librosa's `cqt`
(version 0.5/0.6, `tuning=0`, `scale=True`), which produced the training data of deepsalience.

We compute it in the frequency domain. The window's spectrum is known in closed form, so each
bin is the signal spectrum times a narrow band-pass response; sampling the filtered signal every
`hop` samples equals folding that band modulo `M / hop` spectral lines followed by one short
inverse FFT. This is exact up to truncating the window spectrum beyond `±SIDELOBES / L_k`
(about 0.6 % of its L1 mass, comparable to librosa's `sparsity=0.01`). Long signals are cut into
blocks of frames with enough context for the longest filter, so memory stays bounded.

Shapes: `N` samples, `H` harmonics, `K` bins per harmonic, `F` frames.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from jasco.audio.convert import to_mono

HARMONICS: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
# Half-width of the kept part of each filter's spectrum, in units of 1 / L_k (main lobe = 2).
SIDELOBES = 4.0


def cqt_frequencies(n_bins: int, fmin: float, bins_per_octave: int) -> torch.Tensor:
    """Centre frequencies `fmin * 2 ** (k / bins_per_octave)` in Hz, float64 `[n_bins]`."""
    k = torch.arange(n_bins, dtype=torch.float64)
    return fmin * torch.pow(2.0, k / bins_per_octave)


def filter_lengths(freqs: torch.Tensor, sample_rate: float, bins_per_octave: int) -> torch.Tensor:
    """Window length in samples (float) of each constant-Q filter, `Q * sr / f`."""
    q = 1.0 / (2.0 ** (1.0 / bins_per_octave) - 1.0)
    return q * sample_rate / freqs


def hann_spectrum(x: torch.Tensor) -> torch.Tensor:
    """Fourier transform of a unit-area Hann window of length L at frequency `x / L` (real)."""
    # Hann = 1/L (1 + cos): one centred sinc plus two half-weight sincs one bin away.
    return torch.sinc(x) + 0.5 * torch.sinc(x - 1.0) + 0.5 * torch.sinc(x + 1.0)


def reflect_indices(idx: torch.Tensor, n: int) -> torch.Tensor:
    """Map any integer sample positions into `[0, n)` by repeated mirror reflection (no edge repeat)."""
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    r = torch.remainder(idx, period)
    return torch.where(r >= n, period - r, r)


class _FoldPlan:
    """Precomputed spectral gather/scatter for one block length `M` and one set of filters."""

    def __init__(self, freqs: torch.Tensor, lengths: torch.Tensor, sample_rate: float, n_fft: int, hop: int):
        m = n_fft // hop
        centre = freqs * n_fft / sample_rate  # spectral line of each centre frequency
        half = SIDELOBES * n_fft / lengths
        lo = torch.clamp(torch.ceil(centre - half), min=0).long()
        hi = torch.clamp(torch.floor(centre + half), max=n_fft // 2).long()
        counts = torch.clamp(hi - lo + 1, min=0)
        owner = torch.repeat_interleave(torch.arange(len(freqs)), counts)
        start = torch.cumsum(counts, 0) - counts
        lines = lo[owner] + torch.arange(int(counts.sum())) - start[owner]
        # Offset from the centre in units of 1 / L_k, where the window spectrum is evaluated.
        x = (lines.double() / n_fft - freqs[owner] / sample_rate) * lengths[owner]
        self.lines = lines
        self.weights = (hann_spectrum(x) * torch.sqrt(lengths[owner])).float()
        self.targets = owner * m + torch.remainder(lines, m)
        self.n_filters = len(freqs)
        self.m = m

    def apply(self, spectrum: torch.Tensor) -> torch.Tensor:
        """Filter responses sampled every hop: rfft `[M/2+1]` → complex `[n_filters, M / hop]`."""
        values = spectrum[self.lines] * self.weights
        folded = torch.zeros(self.n_filters * self.m, dtype=values.dtype)
        folded.index_add_(0, self.targets, values)
        return torch.fft.ifft(folded.view(self.n_filters, self.m), dim=-1)


def harmonic_cqt(
    wav: torch.Tensor,
    sample_rate: int = 22050,
    hop: int = 256,
    fmin: float = 32.7,
    bins_per_octave: int = 60,
    n_octaves: int = 6,
    harmonics: Sequence[float] = HARMONICS,
    block_frames: int = 2048,
) -> torch.Tensor:
    """Magnitude HCQT of a mono or multichannel waveform (channels are averaged).

    Frame `t` is centred on sample `t * hop`; the signal is mirror-padded at both ends (librosa's
    `pad_mode='reflect'`), giving `1 + N // hop` frames.

    Args:
        wav: audio `[N]` or `[C, N]` at `sample_rate`.
        sample_rate: sample rate of `wav` in Hz.
        hop: frame hop in samples.
        fmin: lowest bin frequency of harmonic 1, in Hz.
        bins_per_octave: bins per octave.
        n_octaves: octaves per harmonic (`K = n_octaves * bins_per_octave`).
        harmonics: multipliers of `fmin`, one CQT each.
        block_frames: frames computed per block (memory grows linearly with it).

    Returns:
        float32 magnitudes `[H, K, F]`.
    """
    x = to_mono(wav).detach().to("cpu", torch.float64)
    if x.numel() == 0:
        raise ValueError("harmonic_cqt got an empty waveform (0 samples).")
    n = x.numel()
    n_bins = n_octaves * bins_per_octave
    n_frames = 1 + n // hop
    base = cqt_frequencies(n_bins, fmin, bins_per_octave)
    top = max(harmonics) * float(base[-1])
    if top >= sample_rate / 2:
        raise ValueError(
            f"harmonic_cqt: highest bin {top:.0f} Hz is above the Nyquist frequency of "
            f"{sample_rate} Hz audio; resample to a higher rate or reduce harmonics/n_octaves."
        )
    freqs = [base * h for h in harmonics]
    lengths = [filter_lengths(f, sample_rate, bins_per_octave) for f in freqs]
    longest = max(float(lng.max()) for lng in lengths)
    context = int(math.ceil(longest / 2 / hop)) + 1  # frames of context each side of a block
    block = min(block_frames, n_frames)
    n_fft = (block + 2 * context) * hop
    plans = [_FoldPlan(f, lng, sample_rate, n_fft, hop) for f, lng in zip(freqs, lengths)]

    out = torch.empty(len(harmonics), n_bins, n_frames, dtype=torch.float32)
    starts = list(range(0, n_frames - block + 1, block))
    if starts[-1] + block < n_frames:
        starts.append(n_frames - block)  # last block overlaps the previous one, same size
    for t0 in starts:
        first = (t0 - context) * hop
        segment = x[reflect_indices(torch.arange(first, first + n_fft), n)]
        spectrum = torch.fft.rfft(segment).to(torch.complex64)
        for i, plan in enumerate(plans):
            # 1/hop turns the folded inverse FFT back into a plain correlation sum.
            resp = plan.apply(spectrum)[:, context:context + block]
            out[i, :, t0:t0 + block] = resp.abs() / hop
    return out


def amplitude_to_db(mag: torch.Tensor, ref: float | torch.Tensor, amin: float = 1e-5,
                    top_db: float | None = 80.0) -> torch.Tensor:
    """`20 log10(max(amin, mag) / max(amin, ref))`, floored at `max - top_db` (librosa semantics)."""
    ref_t = torch.as_tensor(ref, dtype=mag.dtype).clamp(min=amin)
    db = 20.0 * torch.log10(mag.clamp(min=amin)) - 20.0 * torch.log10(ref_t)
    if top_db is not None:
        db = torch.maximum(db, db.max() - top_db)
    return db


def log_hcqt(mag: torch.Tensor, top_db: float = 80.0) -> torch.Tensor:
    """Network input scaling of deepsalience: `amplitude_to_db(mag, ref=mag.max()) / 80 + 1` in [0, 1]."""
    return amplitude_to_db(mag, ref=mag.max(), top_db=top_db) / 80.0 + 1.0
