"""DistributedDataParallel with 2 gloo ranks on CPU: parameters stay identical across ranks and
equal a single-process run on the combined batch."""

import datetime
import os
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sam2_prompt import PromptEncoder

STEPS, PER_RANK = 3, 4
TIMEOUT_S = 120  # per collective; the whole run takes ~5 s on 2 cores


class PromptModel(torch.nn.Module):
    """A model holding the encoder, with a tiny head and a loss, as a fine-tuning setup would."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = PromptEncoder(32, (8, 8), (128, 128), 8, backend="torch")
        self.head = torch.nn.Linear(32, 1)

    def forward(self, coords, labels, boxes, masks):
        sparse, dense = self.encoder((coords, labels), boxes, masks)
        return self.head(sparse).square().mean() + dense.square().mean()


def batch(step, rank=None):
    gen = torch.Generator().manual_seed(100 + step)
    data = (torch.rand(2 * PER_RANK, 3, 2, generator=gen) * 128,
            torch.randint(-1, 4, (2 * PER_RANK, 3), generator=gen),
            torch.rand(2 * PER_RANK, 4, generator=gen) * 128,
            torch.randn(2 * PER_RANK, 1, 32, 32, generator=gen))
    if rank is None:
        return data
    return tuple(t[rank * PER_RANK:(rank + 1) * PER_RANK] for t in data)


def train(model, rank=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        opt.zero_grad()
        model(*batch(step, rank)).backward()
        opt.step()


def worker(rank, store_path, out_path):
    torch.set_num_threads(1)
    # Loopback only. Otherwise gloo binds the address the hostname resolves to, and a sandboxed
    # machine may accept the bind but never the connection: a hang until gloo's 30-minute timeout.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        # no_mask_embed gets no gradient when masks are given (as in SAM-2, whose trainer sets this)
        model = torch.nn.parallel.DistributedDataParallel(PromptModel(), find_unused_parameters=True)
        train(model, rank)  # DDP averages the gradients of the two ranks' halves
        torch.save(model.module.state_dict(), f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_single_process(tmp_path):
    out = str(tmp_path / "params")
    ranks = mp.spawn(worker, args=(str(tmp_path / "store"), out), nprocs=2, join=False)
    deadline = time.monotonic() + 2 * TIMEOUT_S
    while not ranks.join(timeout=1.0):  # raises if a rank failed
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the DDP ranks did not finish within {2 * TIMEOUT_S} s")
    rank0, rank1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    single = PromptModel()
    train(single)  # the combined batch: the mean loss equals the mean of the two halves' losses
    for name, value in single.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, atol=1e-5, rtol=1e-4)
