"""`dora grid debug`: two tiny experiments on the example dataset, to try the grid machinery.

Each is the `jasco/debug` config (2 short epochs) with its own learning rate. On a CPU-only
cluster each gets one CPU task (see `jasco.grids._slurm`), on a GPU cluster one GPU; on one machine,
`scripts/local_slurm.sh` starts a real SLURM cluster to submit them to (docs/SCALING.md).

`dora grid debug` submits them and prints their table, run it again to follow them;
`dora grid debug --dry_run --init` lists the experiments (and their signatures) without launching,
and `dora run -f SIG` then runs one of them here.
"""
from jasco.grids._explorers import JascoExplorer
from jasco.grids._slurm import place


@JascoExplorer
def explorer(launcher):
    place(launcher, gpus=1, cpu_ok=True, time=30)
    launcher.bind_({"solver": "jasco/debug"})
    for lr in (1e-3, 3e-4):
        launcher({"optim.lr": lr})
