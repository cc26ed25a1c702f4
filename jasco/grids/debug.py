"""`dora grid debug`: a tiny sweep on the example dataset, to try the grid machinery on one machine.

Local use: `dora grid debug --dry_run --init` lists the experiments (and their signatures)
without launching; `dora run -f SIG` then runs one of them here.
"""
from jasco.grids._explorers import JascoExplorer


@JascoExplorer
def explorer(launcher):
    launcher.slurm_(gpus=1, partition=None)
    launcher.bind_({"solver": "jasco/debug"})
    for lr in (1e-3, 3e-4):
        for per_sample in (False, True):
            launcher({"optim.lr": lr, "condition_dropout_per_sample": per_sample})
