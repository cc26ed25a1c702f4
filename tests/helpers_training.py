"""Shared helpers for solver tests: the example dataset and in-process Dora experiments."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from jasco.train import experiment  # noqa: F401  (re-exported for the tests)

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "egs" / "example"


def ensure_example() -> Path:
    """Build egs/example (what `make train` uses) if it is missing."""
    spec = importlib.util.spec_from_file_location("make_example_dataset", REPO_ROOT / "scripts" / "make_example_dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ensure_example_dataset(EXAMPLE)


def free_port() -> int:
    """A TCP port free on localhost right now (for a rendezvous the test starts next)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def uniform_text_example(folder: Path, words: int = 6) -> Path:
    """egs/example with every description cut to its first `words` plain words, in `folder/{train,valid}`
    (the audio and side files are the example's own).

    Text tokens are padded to the longest text of a batch and padding is attended (the published
    behaviour), so an item's loss depends on the other texts of its batch. With texts of one length
    (and no text augmentation: `dataset.train.merge_text_p=0`), losses do not depend on how a
    global batch is split over processes and accumulation steps, and tests can compare them.
    """
    import json
    ensure_example()
    for split in ("train", "valid"):
        (folder / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for line in (EXAMPLE / split / "data.jsonl").read_text().splitlines():
            entry = json.loads(line)
            for key, value in entry.items():
                if key == "path" or key.endswith("_path"):
                    entry[key] = str((EXAMPLE / split / value).resolve())
            info = json.loads(Path(entry["info_path"]).read_text())
            info["description"] = " ".join([w for w in info["description"].split() if w.isalpha()][:words])
            assert len(info["description"].split()) == words, info["description"]
            entry["info_path"] = str(folder / split / Path(entry["info_path"]).name)
            Path(entry["info_path"]).write_text(json.dumps(info))
            lines.append(json.dumps(entry))
        (folder / split / "data.jsonl").write_text("\n".join(lines) + "\n")
    return folder
