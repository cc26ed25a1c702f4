"""`logging.log_wandb=true`: a debug run logs scalars, audio samples and controls pictures to Weights
& Biases, checked in the offline run's own `.wandb` file (WANDB_MODE=offline, nothing uploaded)."""
from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from helpers_training import ensure_example, experiment

from jasco.solvers.wandb_logger import import_wandb

# The debug recipe cut to one short epoch with a generate stage.
FAST_DEBUG = ["solver=jasco/debug", "optim.epochs=1", "optim.updates_per_epoch=2", "schedule.cosine.warmup=1",
              "generate.every=1", "evaluate.every=0", "dataset.generate.num_samples=1", "generate.lm.steps=1"]
BLOCK = 32 * 1024  # the .wandb log: a 7-byte file header, then 32 KiB blocks of records
FULL, LAST = 1, 4  # record kinds that end a (possibly split) protobuf message


def read_wandb_records(path: Path) -> list:
    """The `Record` protobufs of a `.wandb` file (wandb's LevelDB-style log), parsed with wandb's own proto."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a .wandb log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def history_rows(records: list) -> list[dict[str, str]]:
    """Each `run.log` call as `{key: JSON value}` (nested media keys joined with '/')."""
    return [{item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            for record in records if record.WhichOneof("record_type") == "history"]


def test_debug_run_logs_scalars_audio_and_pictures_offline(tmp_path, monkeypatch):
    ensure_example()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    from jasco.train import get_solver
    overrides = [*FAST_DEBUG, "logging.log_wandb=true", "wandb.project=jasco-test", "wandb.group=tests"]
    with experiment(tmp_path / "dora", overrides) as xp:
        solver = get_solver(xp.cfg)
        solver.run()
        sig = xp.sig
    runs = list((tmp_path / "wandb_dir" / "wandb").glob(f"offline-run-*-{sig}"))
    assert len(runs) == 1, runs  # the run id is the experiment signature
    records = read_wandb_records(runs[0] / f"run-{sig}.wandb")
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.project, run.run_group, run.display_name) == ("jasco-test", "tests", sig)  # wandb.name null: the sig
    rows = history_rows(records)
    updates = [row for row in rows if "update" in row]
    assert [row["update"] for row in updates] == ["1", "2"] and all("train_step/loss" in row for row in updates)
    epoch_keys = set().union(*(row for row in rows if row.get("epoch") == "1"))
    assert {"train/loss", "valid/loss", "generate/num_samples"} <= epoch_keys, rows  # flashy's stage summaries
    sample = next(key.removesuffix("/_type") for row in rows for key in row
                  if key.startswith("generate/") and row[key] == '"audio-file"')
    assert any(row.get(f"{sample}_controls/_type") == '"image-file"' for row in rows)  # the controls picture
    media = runs[0] / "files" / "media"
    assert list((media / "audio").rglob("*.wav")) and list((media / "images").rglob("*.png"))


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'jasco\[wandb\]'"):
        import_wandb()
