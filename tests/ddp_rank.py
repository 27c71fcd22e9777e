"""One gloo rank of tests/test_ddp.py, run as its own process: ``python ddp_rank.py RANK STORE OUT``.

Also holds the model, data and training loop that the test's single-process run shares."""

import datetime
import faulthandler
import os
import sys

import torch
import torch.distributed as dist

from sam2_prompt import PromptEncoder

STEPS, PER_RANK = 3, 4
TIMEOUT_S = 120  # per rank, all in; the whole run takes ~5 s on 2 cores


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
    """Step ``step``'s combined batch of 2 * PER_RANK prompts, or rank ``rank``'s half of it."""
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


def main(rank, store_path, out_path):
    # A hang anywhere prints every thread's stack to this rank's log and exits non-zero.
    faulthandler.dump_traceback_later(TIMEOUT_S, exit=True)
    torch.set_num_threads(1)
    # Loopback only: otherwise gloo binds the address the hostname resolves to, where a sandboxed
    # machine may accept the bind but never the connection.
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    # no_mask_embed gets no gradient when masks are given (as in SAM-2, whose trainer sets this)
    model = torch.nn.parallel.DistributedDataParallel(PromptModel(), find_unused_parameters=True)
    train(model, rank)  # DDP averages the gradients of the two ranks' halves
    dist.barrier()  # both ranks are past every collective
    torch.save(model.module.state_dict(), out_path + ".part")
    os.replace(out_path + ".part", out_path)
    print(f"rank {rank}: done", flush=True)
    # No destroy_process_group and no interpreter teardown. PyTorch 2.13 can deadlock there: the
    # DDP Reducer's dealloc drops the last reference to ProcessGroupGloo while holding the GIL, its
    # destructor joins gloo's worker threads, and a worker freeing its last AsyncWork waits for the
    # GIL to drop a Python object held in the thread-local state the work captured (py-spy showed
    # both waits). Any model: a plain two-Linear one hung in 8 of 40 runs here, and it hung CI.
    # Teardown is not what the test checks, and this process holds nothing that needs releasing.
    os._exit(0)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
