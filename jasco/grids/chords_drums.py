"""`dora grid chords_drums`: the published chords+drums recipe (400M and 1B) on 32 GPUs.

Set the dataset first: `dset=audio/<yours>` (copy config/dset/audio/default.yaml). The published
global batch of 336 and the GPU count (4 nodes x 8) are the values this grid launches with.
"""
from jasco.grids._explorers import JascoExplorer


@JascoExplorer
def explorer(launcher):
    launcher.slurm_(gpus=32, partition=None, mem_per_gpu=40)
    launcher.bind_({"solver": "jasco/chords_drums", "device": "cuda", "autocast": True})
    for scale in ("small", "medium"):
        launcher({"model/lm/model_scale": scale})
    launcher({"model/lm/model_scale": "small", "solver": "jasco/chords_drums_melody"})
