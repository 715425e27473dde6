"""Architecture search quickstart: training-aware NAS (reward A * S^w * P^v) on real digits, on CPU.

    python -m effnetv2_jax.nas --config=configs/nas_quickstart.py --workdir=/tmp/nas_quickstart

The training recipe is configs/quickstart.py's (scikit-learn digits, nothing downloaded); the
search varies each of its 4 stages (conv type, layers -1/0/+1, kernel 3/5, expansion 1/4/6,
SE on/off: 17,915,904 networks with the quickstart's strides and channels) by regularised
evolution. Each candidate trains for a few epochs at 32 px (one stage, the quickstart's
first-stage regularisation) and is scored by held-out top-1 (EMA weights), the median time of
its compiled train step on this machine, and its parameter count, with the paper's w = -0.07,
v = -0.05. Output in the workdir: candidates.jsonl (every candidate), best_config.py (the
winner with the full quickstart recipe: `python -m effnetv2_jax.main
--config=WORKDIR/best_config.py --workdir=...`), pareto.png.

Expected (measured with the command above; 2 CPU cores shared with other jobs, load ~10, so
the process got 34% of one core): 21 min wall, 443 s of CPU (user + sys), i.e. a few minutes
on an idle 2-core machine. Most of each candidate is compiling its train step. It printed one
line per candidate, then (S is inflated here by the load; on a quiet machine the quickstart's
own network steps in ~0.18 s at 32 px):

    6 candidates (0 failed); top 5 by reward A * S^-0.07 * P^-0.05:
    rank  id      reward    top1   step_ms     params    MMACs  blocks
       1  c0005   0.5409  0.9222    346.08     190594     9.59  r1_k3_s1_e4_i16_o16_c1 ...
       2  c0002   0.5284  0.9028    420.01     151522     9.01  r1_k3_s1_e4_i16_o16_c1 ...
       3  c0003   0.5237  0.8944    411.96     154594     9.02  r1_k3_s1_e4_i16_o16_c1 ...

The winner (c0005, an evolved candidate): r1_k3_s1_e4_i16_o16_c1 r3_k3_s2_e4_i16_o32_c1
r1_k5_s2_e1_i32_o48_se0.25_c1 r1_k5_s2_e4_i48_o64. Running the command again in the same
workdir trains nothing and prints the same table; `--config.nas.num_candidates=20` continues
the search from where it stopped.
"""

import importlib.util
import os

from effnetv2_jax.nas import add_nas


def _quickstart():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py")
    spec = importlib.util.spec_from_file_location("quickstart_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = add_nas(_quickstart())
    nas = config.nas
    nas.strategy = "evolution"
    nas.num_candidates = 6      # 3 random, then 3 mutations of tournament winners
    nas.population_size = 3
    nas.sample_size = 2
    nas.image_size = 32         # the quickstart's first progressive stage
    nas.train_epochs = 4.0      # 90 steps of batch 64
    nas.timed_steps = 5
    return config
