"""DistributedDataParallel with 2 gloo ranks on CPU: parameters stay identical across ranks and
equal a single-process run on the combined batch."""

import os
import subprocess
import sys
import time

import torch

from ddp_rank import TIMEOUT_S, PromptModel, train

RANK_SCRIPT = os.path.join(os.path.dirname(__file__), "ddp_rank.py")


def test_two_ranks_match_single_process(tmp_path):
    out, logs = str(tmp_path / "params"), [tmp_path / f"rank{r}.log" for r in range(2)]
    ranks = []
    for rank, log in enumerate(logs):
        with open(log, "w") as sink:
            ranks.append(subprocess.Popen(
                [sys.executable, RANK_SCRIPT, str(rank), str(tmp_path / "store"), f"{out}.{rank}"],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S + 30  # each rank's own watchdog fires at TIMEOUT_S
    while any(p.poll() is None for p in ranks) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in ranks:
        if p.poll() is None:
            p.kill()
            p.wait()
    for rank, (p, log) in enumerate(zip(ranks, logs)):
        assert p.returncode == 0, f"rank {rank} exited with {p.returncode}:\n{log.read_text()}"

    rank0, rank1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    single = PromptModel()
    train(single)  # the combined batch: the mean loss equals the mean of the two halves' losses
    for name, value in single.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, atol=1e-5, rtol=1e-4)
