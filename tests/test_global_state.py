"""No hidden global state: importing jasco changes no library global, `experiment()` restores what it changes."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Phase 1: import every jasco module and list, in import order, the other modules that this brings in.
LIST_DEPENDENCIES = r"""
import importlib, json, pkgutil, sys
before = set(sys.modules)
import jasco
for info in pkgutil.walk_packages(jasco.__path__, "jasco."):
    importlib.import_module(info.name)
print(json.dumps([n for n in sys.modules if n not in before and n != "jasco" and not n.startswith("jasco.")]))
"""

# Phase 2: import those modules first (their own import-time effects are not ours), take a snapshot
# of the process-wide state, import every jasco module, and report what differs.
CHECK_IMPORTS = r"""
import importlib, json, logging, os, pkgutil, random, sys, types, warnings
for name in json.loads(sys.argv[1]):
    try:
        importlib.import_module(name)
    except Exception:
        pass
import numpy as np
import torch
import torch.multiprocessing
from hydra.core.plugins import Plugins
Plugins.instance()  # Hydra's plugin registry, built (plugin modules re-imported) by whoever first uses Hydra

def module_attributes():
    return {name: {key: id(value) for key, value in list(vars(module).items())}
            for name, module in list(sys.modules.items())
            if isinstance(module, types.ModuleType) and name not in ("__main__", "__mp_main__")}

def snapshot():
    return {
        "environ": dict(os.environ),
        "sys.path": list(sys.path),
        "torch": [torch.get_num_threads(), torch.get_num_interop_threads(), str(torch.get_default_dtype()),
                  torch.are_deterministic_algorithms_enabled(), torch.is_grad_enabled(),
                  torch.get_float32_matmul_precision(), torch.backends.cudnn.benchmark,
                  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                  torch.multiprocessing.get_start_method(allow_none=True)],
        "rng": [torch.random.get_rng_state().tolist(), repr(np.random.get_state()), repr(random.getstate())],
        "logging": [logging.root.level, [id(h) for h in logging.root.handlers], logging.root.manager.disable,
                    {name: getattr(lg, "level", None) for name, lg in logging.root.manager.loggerDict.items()}],
        "warnings": [repr(f) for f in warnings.filters],
    }

before, attributes = snapshot(), module_attributes()
import jasco
for info in pkgutil.walk_packages(jasco.__path__, "jasco."):
    importlib.import_module(info.name)
after = snapshot()
problems = []
env_before, env_after = before["environ"], after["environ"]
changed = sorted(k for k in set(env_before) | set(env_after) if env_before.get(k) != env_after.get(k))
if changed:
    problems.append(f"os.environ: {changed} changed")
if before["rng"] != after["rng"]:
    problems.append("a random number generator was used or seeded")
for key in ("sys.path", "torch", "warnings"):
    if before[key] != after[key]:
        problems.append(f"{key}: {before[key]!r} -> {after[key]!r}")
root_level, root_handlers, disable, levels = before["logging"]
if after["logging"][:3] != [root_level, root_handlers, disable]:
    problems.append(f"logging root: {before['logging'][:3]} -> {after['logging'][:3]}")
for name, level in levels.items():
    if after["logging"][3].get(name) != level:
        problems.append(f"logger {name}: level {level} -> {after['logging'][3].get(name)}")
for name, old in attributes.items():
    new = vars(sys.modules[name]) if name in sys.modules else {}
    for key, ident in old.items():
        if key not in new or id(new[key]) != ident:
            problems.append(f"{name}.{key} was replaced or deleted")
    if type(sys.modules.get(name)) is not types.ModuleType:
        continue  # a lazy module (transformers) adds what it loads on first access
    for key, value in new.items():
        if key not in old and key != "__warningregistry__" and not isinstance(value, types.ModuleType):
            problems.append(f"{name}.{key} was added")

# Dora's main object: exactly what Dora builds from config/config.yaml, the experiment root aside.
from dora.hydra import HydraMain
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from jasco import environment
from jasco.train import main
if GlobalHydra.instance().is_initialized():
    problems.append("Hydra is left initialized")
with initialize_config_dir(config_dir=str(environment.CONFIG_DIR), version_base="1.1"):
    config = compose("config")
if OmegaConf.to_container(main._base_cfg) != OmegaConf.to_container(config):
    problems.append("main._base_cfg differs from config/config.yaml")
expected = HydraMain._get_dora(main)
expected.dir = environment.dora_dir()
if main.dora != expected:
    problems.append(f"main.dora: {main.dora} != {expected}")
print(json.dumps(problems))
"""


def _python(code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "JASCO_DORA_DIR"}
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_importing_jasco_changes_no_library_global():
    dependencies = _python(LIST_DEPENDENCIES)
    assert json.loads(_python(CHECK_IMPORTS, dependencies)) == []


# ---------------------------------------------------------------- jasco.train.experiment
def _state() -> dict:
    from dora import is_xp
    from hydra.core.global_hydra import GlobalHydra

    from jasco.train import main
    return {"environ": dict(os.environ), "dora": id(main.dora), "dora fields": dataclasses.asdict(main.dora),
            "in an xp": is_xp(), "hydra": GlobalHydra.instance().is_initialized()}


@pytest.mark.parametrize("preset", [None, "/somewhere/else"])
def test_experiment_restores_environment_and_dora(tmp_path, monkeypatch, preset):
    from jasco.train import experiment, main
    if preset is None:
        monkeypatch.delenv("JASCO_DORA_DIR", raising=False)
    else:
        monkeypatch.setenv("JASCO_DORA_DIR", preset)
    before = _state()
    with experiment(tmp_path, ["solver=jasco/debug"]) as xp:
        assert os.environ["JASCO_DORA_DIR"] == str(tmp_path)
        assert main.dora.dir == tmp_path and xp.folder.parent == tmp_path / "xps"
    assert _state() == before
    assert xp.folder.parent == tmp_path / "xps"  # the XP keeps its own folder

    with pytest.raises(RuntimeError, match="boom"), experiment(tmp_path, ["solver=jasco/debug"]):
        assert main.dora.dir == tmp_path
        raise RuntimeError("boom")
    assert _state() == before

    # Fails while composing the config, before the body.
    with pytest.raises(Exception, match="no_such_solver"), experiment(tmp_path, ["solver=jasco/no_such_solver"]):
        pass
    assert _state() == before


def test_team_slurm_partition_is_supplied_without_touching_the_base_config(monkeypatch):
    from jasco import environment
    from jasco.train import main
    monkeypatch.setattr(environment, "slurm_partitions", lambda: {"global": "learnfair", "team": None})
    assert main.get_slurm_config().partition == "learnfair"
    assert main._base_cfg.slurm.partition is None
    monkeypatch.setattr(environment, "slurm_partitions", lambda: {"global": None})
    assert main.get_slurm_config().partition is None
