"""Weights & Biases experiment tracking (`logging.log_wandb=true`, the `wandb:` config section).

`WandbLogger` is a flashy experiment logger written against the wandb API itself: the solver adds
it beside TensorBoard, so flashy's per-epoch stage summaries reach it, and the solver sends it the
per-update scalars and each generate stage's samples (audio and the controls picture). Runs are
named after the experiment signature unless `wandb.name` is set, and write their files under the
XP folder (`<xp>/wandb/`) unless `$WANDB_DIR` says otherwise; `WANDB_MODE=offline` keeps them local
(`wandb sync <xp>/wandb/offline-run-*` uploads them later). wandb is imported only when enabled:
`pip install 'jasco[wandb]'`.

Shapes: audio `[C, N]` (channels averaged to mono for the player).
"""
from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from flashy.loggers.base import ExperimentLogger


def import_wandb() -> Any:
    """The wandb module, or an ImportError naming the extra to install."""
    try:
        import wandb
    except ImportError as err:
        raise ImportError("logging.log_wandb=true needs the wandb package: pip install 'jasco[wandb]' "
                          "(or set logging.log_wandb=false)") from err
    return wandb


class WandbLogger(ExperimentLogger):
    """One wandb run per experiment: scalars with an `epoch` or `update` axis, audio and pictures.

    Args:
        folder: the XP folder (run files go to `<folder>/wandb` unless `$WANDB_DIR` is set).
        project, name, group: the run's wandb project, display name and group.
        run_id: the run id (the experiment signature: a resumed experiment continues its run).
        config: the resolved experiment config, stored as the run's config.
    """

    def __init__(self, folder: str | Path, project: str, name: str, group: str | None, run_id: str,
                 config: dict[str, Any] | None = None) -> None:
        self._wandb = import_wandb()
        self._save_dir = str(folder)
        directory = os.environ.get("WANDB_DIR") or self._save_dir
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.run = self._wandb.init(project=project, name=name, group=group, id=run_id, resume="allow",
                                    dir=directory, config=config)

    # ------------------------------------------------------------------ flashy's ExperimentLogger
    @property
    def save_dir(self) -> str:
        """The XP folder."""
        return self._save_dir

    @property
    def with_media_logging(self) -> bool:
        """Audio and pictures are logged."""
        return True

    @property
    def name(self) -> str:
        """The logger's name in flashy's result logger."""
        return "wandb"

    def log_hyperparams(self, params: dict[str, Any] | Namespace, metrics: dict | None = None) -> None:
        """Add `params` to the run's config."""
        self.run.config.update(vars(params) if isinstance(params, Namespace) else dict(params), allow_val_change=True)

    def log_metrics(self, prefix: str | list[str], metrics: dict, step: int | None = None) -> None:
        """Stage summaries: `<prefix>/<key>` against `epoch` (flashy calls this once per stage)."""
        self.log_scalars(_prefix(prefix), metrics, "epoch", step)

    def log_audio(self, prefix: str | list[str], key: str, audio: Any, sample_rate: int,
                  step: int | None = None, **kwargs: Any) -> None:
        """Audio `[C, N]` as a player under `<prefix>/<key>`."""
        mono = torch.as_tensor(audio).float().reshape(-1, torch.as_tensor(audio).shape[-1]).mean(0)  # [N]
        self._log({f"{_prefix(prefix)}/{key}": self._wandb.Audio(mono.clamp(-0.99, 0.99).numpy(),
                                                                   sample_rate=sample_rate, **kwargs)}, "epoch", step)

    def log_image(self, prefix: str | list[str], key: str, image: Any, step: int | None = None, **kwargs: Any) -> None:
        """A picture (file path, array or PIL image) under `<prefix>/<key>`."""
        self._log({f"{_prefix(prefix)}/{key}": self._wandb.Image(image, **kwargs)}, "epoch", step)

    def log_text(self, prefix: str | list[str], key: str, text: str, step: int | None = None, **kwargs: Any) -> None:
        """Text under `<prefix>/<key>`."""
        self._log({f"{_prefix(prefix)}/{key}": self._wandb.Html(f"<pre>{text}</pre>")}, "epoch", step)

    # ------------------------------------------------------------------ jasco's own
    def log_scalars(self, prefix: str, metrics: dict[str, float], axis: str, step: int | None) -> None:
        """`<prefix>/<key>` scalars against the `axis` key (`epoch` or `update`)."""
        values = {f"{prefix}/{key}": float(value) for key, value in metrics.items()
                  if isinstance(value, (int, float)) or (torch.is_tensor(value) and value.numel() == 1)}
        if values:
            self._log(values, axis, step)

    def log_samples(self, folder: Path, audio_format: str, epoch: int) -> int:
        """Log a generate stage's samples (`<name>.<format>` and `<name>.png`) under `generate/<name>`."""
        from jasco.audio.io import audio_read

        count = 0
        for path in sorted(folder.glob(f"*.{audio_format}")):
            wav, sample_rate = audio_read(path)  # [C, N]
            self.log_audio("generate", path.stem, wav, sample_rate, epoch)
            picture = path.with_suffix(".png")
            if picture.is_file():
                self.log_image("generate", f"{path.stem}_controls", str(picture), epoch)
            count += 1
        return count

    def finish(self) -> None:
        """Close the run (flushes its files)."""
        self.run.finish()

    def _log(self, values: dict[str, Any], axis: str, step: int | None) -> None:
        # No wandb `step=`: its step must only grow, and epochs and updates are two axes. Each
        # record carries its own axis key instead.
        self.run.log({**values, **({axis: step} if step is not None else {})})


def _prefix(prefix: str | list[str]) -> str:
    return prefix if isinstance(prefix, str) else "/".join(prefix)
