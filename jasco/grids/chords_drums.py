"""`dora grid chords_drums`: the published chords+drums recipe (400M and 1B) on 32 GPUs.

Choose the dataset config with `JASCO_DSET=audio/<yours>` (copy config/dset/audio/default.yaml to
config/dset/audio/<yours>.yaml and fill in your folders). The published global batch of 336 and the
GPU count (4 nodes x 8) are the values this grid launches with.
"""
import os

from jasco.grids._explorers import JascoExplorer
from jasco.grids._slurm import place


@JascoExplorer
def explorer(launcher):
    place(launcher, gpus=32)  # one task per GPU; CPUs, memory and partitions from the team config
    launcher.bind_({"solver": "jasco/chords_drums", "dset": os.environ.get("JASCO_DSET", "audio/default"),
                    "autocast": True})
    for scale in ("small", "medium"):
        launcher({"model/lm/model_scale": scale})
    launcher({"model/lm/model_scale": "small", "solver": "jasco/chords_drums_melody"})
