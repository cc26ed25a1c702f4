"""Every config key is read by the code, builders reject unknown keys, and unsupported features stop a run.

How reads are found: every solver config under config/solver is composed, then the code runs on it
while `DictConfig` access (attribute, `[]`, `get`, `items`, `**`) and `OmegaConf.to_container`
results are watched. The runs: one tiny `train.main` on the debug config (a train step, valid,
evaluate and generate, then `continue_from` that checkpoint), the model builders on every
solver config (meta device), every learning-rate schedule of `schedule`, and Dora's own readers
of `dora` and `slurm`. A key that none of them reads fails the test, unless `ALLOWED_UNREAD` says
why it stays.
"""
from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import torch
from dora.conf import DoraConfig, SlurmConfig, update_from_hydra
from helpers_training import ensure_example, experiment
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from jasco.environment import CONFIG_DIR, resolve_device
from jasco.models.builders import get_flow_matching_model, get_jasco_model
from jasco.models.codec import EncodecCompressionModel
from jasco.models.loaders import model_config
from jasco.solvers.continuation import initial_state_from
from jasco.solvers.schedulers import build_lr_scheduler

# Solver configs: `default` (config/solver/default.yaml, what `config.yaml` selects) and jasco/*.
SOLVERS = ["default", *sorted(f"jasco/{p.stem}" for p in (CONFIG_DIR / "solver" / "jasco").glob("*.yaml"))]
# Keys that no code of this repository reads, each with the reason it stays.
ALLOWED_UNREAD: dict[str, str] = {}
# The debug run: one update, every stage, on whatever `device=auto` resolves to.
RUN = ["solver=jasco/debug", "device=auto", "optim.epochs=1", "optim.updates_per_epoch=1",
       "schedule.cosine.warmup=0", "evaluate.every=1", "generate.every=1"]
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def compose_solver(solver: str, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.1"):
        return compose("config", overrides=[f"solver={solver}", *overrides])


def leaf_keys(cfg: DictConfig, prefix: str = "") -> set[str]:
    """Dotted keys of the leaves of `cfg` (lists and empty mappings are leaves)."""
    keys: set[str] = set()
    for key in cfg:
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing() and len(node):
            keys |= leaf_keys(node, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


# ---------------------------------------------------------------- read tracking
class ReadTracker:
    """Records the dotted keys read from the configs given to `recording`."""

    def __init__(self) -> None:
        self.read: set[str] = set()
        self._roots: list[DictConfig] = []
        self._quiet = 0

    def tracks(self, node: DictConfig) -> bool:
        root = node._get_root()
        return not self._quiet and any(root is tracked for tracked in self._roots)

    def record(self, key: str, value: Any, raw: Any = None) -> None:
        """A read of `key`: leaves count (a mapping counts through its own reads), and what they interpolate."""
        if not (isinstance(value, (dict, DictConfig)) and len(value)):
            self.read.add(key)
        if isinstance(raw, str):
            self.read.update(INTERPOLATION.findall(raw))

    @contextmanager
    def recording(self, *roots: DictConfig) -> Iterator[ReadTracker]:
        """Watch `roots` (and only them) while the body runs."""
        tracker, self._roots = self, list(roots)
        get_impl, to_container, to_yaml, select = (DictConfig._get_impl, OmegaConf.to_container,
                                                   OmegaConf.to_yaml, OmegaConf.select)

        def tracked_get_impl(node: DictConfig, key: Any, default_value: Any, validate_key: bool = True) -> Any:
            value = get_impl(node, key, default_value, validate_key)
            if tracker.tracks(node):
                child = node._get_node(key, validate_access=False)
                if child is not None:
                    tracker.record(node._get_full_key(key), value, child._value())
            return value

        def tracked_to_container(cfg: Any, *args: Any, **kwargs: Any) -> Any:
            out = to_container(cfg, *args, **kwargs)
            if isinstance(cfg, DictConfig) and tracker.tracks(cfg):
                return TrackedDict.wrap(out, cfg, cfg._get_full_key(None), tracker)
            return out

        def quiet_to_yaml(cfg: Any, *args: Any, **kwargs: Any) -> str:
            tracker._quiet += 1  # the copy of the config saved in checkpoints reads nothing
            try:
                return to_yaml(cfg, *args, **kwargs)
            finally:
                tracker._quiet -= 1

        def tracked_select(cfg: Any, key: str, *args: Any, **kwargs: Any) -> Any:
            value = select(cfg, key, *args, **kwargs)
            if isinstance(cfg, DictConfig) and tracker.tracks(cfg):
                prefix = cfg._get_full_key(None)
                tracker.record(f"{prefix}.{key}" if prefix else key, value)
            return value

        DictConfig._get_impl = tracked_get_impl
        OmegaConf.to_container = staticmethod(tracked_to_container)
        OmegaConf.to_yaml = staticmethod(quiet_to_yaml)
        OmegaConf.select = staticmethod(tracked_select)
        try:
            yield self
        finally:
            DictConfig._get_impl = get_impl
            OmegaConf.to_container = staticmethod(to_container)
            OmegaConf.to_yaml = staticmethod(to_yaml)
            OmegaConf.select = staticmethod(select)
            self._roots = []


class TrackedDict(dict):
    """A `to_container` result that records the leaves read from it (`[]`, `get`, `items`, `**`, `dict()`)."""

    _path: str
    _tracker: ReadTracker
    _raw: dict[Any, Any]

    @classmethod
    def wrap(cls, value: Any, node: Any, path: str, tracker: ReadTracker) -> Any:
        if not isinstance(value, dict):
            return value
        children = {key: node._get_node(key) if isinstance(node, DictConfig) else None for key in value}
        out = cls((key, cls.wrap(sub, children[key], cls._join(path, key), tracker)) for key, sub in value.items())
        out._path, out._tracker = path, tracker
        out._raw = {key: child._value() for key, child in children.items() if child is not None}
        return out

    @staticmethod
    def _join(path: str, key: Any) -> str:
        return f"{path}.{key}" if path else str(key)

    def __getitem__(self, key: Any) -> Any:
        value = super().__getitem__(key)
        self._tracker.record(self._join(self._path, key), value, self._raw.get(key))
        return value

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[Any]:  # a Python __iter__ sends dict(x), {**x}, f(**x) through __getitem__
        return super().__iter__()

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        return [(key, self[key]) for key in dict.__iter__(self)]

    def values(self) -> list[Any]:  # type: ignore[override]
        return [self[key] for key in dict.__iter__(self)]


@contextmanager
def restored_process_state() -> Iterator[None]:
    """`train.main` sets up logging and torch threads for a process: give them back to pytest."""
    root = logging.getLogger()
    handlers, level, threads = list(root.handlers), root.level, torch.get_num_threads()
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        torch.set_num_threads(threads)


def read_by_the_debug_run(tracker: ReadTracker, dora_dir: Path) -> None:
    """`train.main` on the debug config, then `continue_from` its checkpoint, then Dora's readers."""
    from jasco.train import main
    ensure_example()
    with experiment(dora_dir, RUN) as xp:
        xp.folder.mkdir(parents=True, exist_ok=True)  # `dora run` makes it before calling main
        with restored_process_state(), tracker.recording(xp.cfg):
            main.main(xp.cfg)
        checkpoint = xp.folder / "checkpoint.th"
    follow_up = copy.deepcopy(xp.cfg)
    follow_up.continue_from = str(checkpoint)
    with tracker.recording(follow_up):
        assert initial_state_from(follow_up, dora_dir / "follow_up") is not None
        update_from_hydra(DoraConfig(), follow_up.dora)  # how Dora reads `dora` (unknown keys raise)
        update_from_hydra(SlurmConfig(), follow_up.slurm)  # and `slurm`, for `dora grid` / launch


def read_by_the_schedules(tracker: ReadTracker, cfg: DictConfig) -> None:
    """Each `schedule.KIND` section, as read when `schedule.lr_scheduler=KIND` (nulls set to 1)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    for kind in cfg.schedule:
        if kind == "lr_scheduler":
            continue
        root = OmegaConf.create({"schedule": OmegaConf.to_container(cfg.schedule)})
        root.schedule.lr_scheduler = kind
        for key, value in root.schedule[kind].items():
            root.schedule[kind][key] = 1 if value is None else value
        with tracker.recording(root):
            build_lr_scheduler(optimizer, root.schedule, 10)


@pytest.fixture(scope="module")
def codec() -> EncodecCompressionModel:
    return EncodecCompressionModel.debug()  # tiny; its init computes codebooks, so not on meta


@pytest.fixture(scope="module")
def configs() -> dict[str, DictConfig]:
    return {solver: compose_solver(solver) for solver in SOLVERS}


@pytest.fixture(scope="module")
def read_keys(configs, codec, tmp_path_factory) -> set[str]:
    tracker = ReadTracker()
    read_by_the_debug_run(tracker, tmp_path_factory.mktemp("dora"))
    for cfg in configs.values():
        if "transformer_lm" in cfg:
            with tracker.recording(cfg), torch.device("meta"):
                get_flow_matching_model(cfg, codec)
    read_by_the_schedules(tracker, configs["jasco/debug"])
    return tracker.read


# ---------------------------------------------------------------- every key is read
def test_every_config_key_is_read(configs, read_keys):
    unread: dict[str, list[str]] = {}
    for solver, cfg in configs.items():
        for key in sorted(leaf_keys(cfg) - read_keys - set(ALLOWED_UNREAD)):
            unread.setdefault(key, []).append(solver)
    assert not unread, "config keys that no code reads (wire them or remove them): " + "; ".join(
        f"{key} (solver={', '.join(solvers)})" for key, solvers in unread.items())


def test_allowed_unread_keys_exist_and_are_unread(configs, read_keys):
    every_key = set().union(*(leaf_keys(cfg) for cfg in configs.values()))
    assert set(ALLOWED_UNREAD) <= every_key, "allow-listed keys that no config has any more"
    assert not set(ALLOWED_UNREAD) & read_keys, "allow-listed keys that are read after all"


def test_dora_exclude_names_existing_keys(configs):
    every_key = set().union(*(leaf_keys(cfg) for cfg in configs.values()))
    for pattern in configs["default"].dora.exclude:
        assert any(fnmatch(key, pattern) for key in every_key), f"dora.exclude: {pattern!r} matches no key"


def test_tracker_sees_each_kind_of_read():
    cfg = OmegaConf.create({"a": 1, "b": {"c": 2, "d": "${a}"}, "e": {"f": 3, "g": 4}, "h": {"i": 5},
                            "j": {"k": 6}, "unread": 7})
    tracker = ReadTracker()

    def splat(**kwargs: Any) -> None:
        pass

    with tracker.recording(cfg):
        assert cfg.b.get("c") == 2 and cfg.b.d == 1
        splat(**OmegaConf.to_container(cfg.e))
        assert dict(OmegaConf.to_container(cfg)["h"]) == {"i": 5}
        assert OmegaConf.select(cfg, "j.k") == 6
        OmegaConf.to_yaml(cfg)
    assert leaf_keys(cfg) - tracker.read == {"unread"}


# ---------------------------------------------------------------- strict builders
def _build(cfg: DictConfig | dict, codec: EncodecCompressionModel) -> None:
    with torch.device("meta"):
        get_flow_matching_model(cfg, codec)


@pytest.mark.parametrize(("override", "key"), [
    ("+transformer_lm.dimm=64", "dimm"),
    ("+conditioners.chords.chords_emb.cardd=194", "cardd"),
    ("+conditioners.self_wav.drum_latents.sample_rate=32000", "sample_rate"),
    ("+conditioners.melody.melodyy={}", "melodyy"),
    ("+fuser.crosss=[]", "crosss"),
    ("+classifier_free_guidance.inference_coef=3.0", "inference_coef"),
    ("+attribute_dropout.symbolic.chordz=0.5", "chordz"),
])
def test_builders_reject_unknown_keys(override, key, codec):
    cfg = compose_solver("jasco/debug", override)
    section = override[1:].split("=")[0].rsplit(".", 1)[0]
    with pytest.raises(ValueError, match=rf"^{re.escape(section)}: unknown key\(s\) \['{key}'\]; known keys: \[") as info:
        _build(cfg, codec)
    assert "\n" not in str(info.value)


def test_loader_drops_published_extras_explicitly(codec):
    cfg = OmegaConf.to_container(compose_solver("jasco/debug"), resolve=True)
    published = copy.deepcopy(cfg)
    published["transformer_lm"].update(n_q=4, card=2048, memory_efficient=True, emb_lr=None)
    published["conditioners"]["self_wav"]["drum_latents"].update(sample_rate=32000, cache_path="???")
    published["conditioners"]["args"] = {"merge_text_conditions_p": 0.25}
    published["classifier_free_guidance"]["inference_coef"] = 3.0
    with pytest.raises(ValueError, match="unknown key"):
        _build(published, codec)
    kept = model_config(published)
    assert kept == model_config(cfg)
    assert "t5" not in kept["conditioners"]["description"]  # only the selected kind's section
    _build(kept, codec)


# ---------------------------------------------------------------- device
def test_device_auto_is_the_default_and_resolves_to_what_is_there(codec):
    assert compose_solver("default").device == "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    model = get_jasco_model(compose_solver("jasco/debug", "device=auto"), compression_model=copy.deepcopy(codec))
    assert next(model.parameters()).device.type == expected


def test_device_errors_name_the_value():
    with pytest.raises(ValueError, match=r"^device='gpu' is not supported: use one of auto, cpu, cuda, cuda:N$"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"^device=cuda but no GPU is visible"):
            resolve_device("cuda")
