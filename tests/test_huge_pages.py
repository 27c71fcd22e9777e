"""The huge-page hint on the mask path's large CPU outputs (sam2_prompt/huge_pages.py).

The hint changes no value, so what is tested is that it reaches the kernel for exactly the memory
it names (the mapping holding the tensor carries Linux's ``hg`` flag, MADV_HUGEPAGE, in
/proc/self/smaps afterwards, and only then); the policy (only when an earlier output at least as
large was freed within HOT_SECONDS, on a clock the tests drive; not when turned off, small or not
on the CPU); that the mask path gives it to its output and nothing else; and that results are
bitwise the same with and without it.
"""

import gc
import os
import sys

import pytest
import torch

from sam2_prompt import huge_pages
from sam2_prompt import masks as mask_path
from test_masks import EPS, FP32_ATOL, meta_forward, meta_module, random_masks, weights_of

LINUX_THP = sys.platform.startswith("linux") and os.path.exists(
    "/sys/kernel/mm/transparent_hugepage/enabled")
needs_thp = pytest.mark.skipif(not LINUX_THP, reason="needs Linux with transparent huge pages")
BIG = 16 << 20  # fp32 elements: 64 MiB, over MIN_BYTES


def vm_flags(address: int) -> set:
    """The VmFlags of the mapping that holds ``address``, from /proc/self/smaps."""
    found = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                start, end = (int(x, 16) for x in head.split("-"))
                found = start <= address < end
            elif found and head == "VmFlags:":
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def first_huge_page(t) -> int:
    return -(-t.untyped_storage().data_ptr() // huge_pages.HUGE_PAGE) * huge_pages.HUGE_PAGE


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    """The policy's clock, driven by the test; nothing freed before the test counts."""
    gc.collect()
    fake = Clock()
    monkeypatch.setattr(huge_pages, "_clock", fake)
    monkeypatch.setattr(huge_pages, "_last_freed", (float("-inf"), 0))
    monkeypatch.delenv(huge_pages.HUGE_PAGES_ENV, raising=False)
    return fake


@pytest.fixture
def calls(monkeypatch):
    """Every madvise the module makes, as (address, length, advice); reported as taken."""
    seen = []
    monkeypatch.setattr(huge_pages, "_madvise",
                        lambda addr, size, advice: seen.append((addr, size, advice)) or 0)
    return seen


@needs_thp
def test_hint_flags_the_tensors_mapping():
    t = torch.empty(BIG)
    inside = first_huge_page(t)
    assert "hg" not in vm_flags(inside)
    assert huge_pages.huge_page_hint(t)
    assert "hg" in vm_flags(inside)
    t.fill_(1.5)  # the memory behaves as any other
    assert t.sum().item() == 1.5 * t.numel()


def test_hint_names_whole_pages_inside_the_storage(calls):
    t = torch.empty(BIG + 123)
    assert huge_pages.huge_page_hint(t)
    (addr, size, advice), = calls
    start, nbytes = t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()
    assert advice == 14 and addr % huge_pages.HUGE_PAGE == 0 and size % huge_pages.HUGE_PAGE == 0
    assert start <= addr and addr + size <= start + nbytes
    assert size >= nbytes - 2 * huge_pages.HUGE_PAGE


def test_policy_only_when_memory_was_just_freed(clock, calls):
    first = torch.empty(BIG)
    assert not huge_pages.advise_huge_pages(first)  # nothing freed yet: a cold start
    held = torch.empty(BIG)
    assert not huge_pages.advise_huge_pages(held)  # the first output is still held
    del first
    clock.now += 0.5
    again = torch.empty(BIG)
    assert huge_pages.advise_huge_pages(again)  # a batch job's steady state
    bigger = torch.empty(2 * BIG)
    assert not huge_pages.advise_huge_pages(bigger)  # less was freed than it needs
    del again
    clock.now += huge_pages.HOT_SECONDS + 0.1
    after_pause = torch.empty(BIG)
    assert not huge_pages.advise_huge_pages(after_pause)  # freed too long ago
    clock.now += huge_pages.HOT_SECONDS + 0.1
    view = after_pause[1:]
    del after_pause  # the view keeps the storage
    assert not huge_pages.advise_huge_pages(torch.empty(BIG))
    del view  # freed only now: hot
    assert huge_pages.advise_huge_pages(torch.empty(BIG))
    assert len(calls) == 2


def test_policy_off_small_or_not_cpu(clock, calls, monkeypatch):
    del clock
    huge_pages._freed(4 * BIG * 4)  # memory at hand: only the other conditions decline
    monkeypatch.setenv(huge_pages.HUGE_PAGES_ENV, "0")
    assert not huge_pages.advise_huge_pages(torch.empty(BIG))
    monkeypatch.delenv(huge_pages.HUGE_PAGES_ENV)
    assert not huge_pages.advise_huge_pages(torch.empty(1 << 20))  # 4 MiB: under MIN_BYTES
    assert not huge_pages.advise_huge_pages(torch.empty(BIG, device="meta"))
    assert calls == []
    assert huge_pages.advise_huge_pages(torch.empty(BIG))


def test_mask_path_hints_its_output_only(upstream, clock, calls, monkeypatch):
    """mask_embed_fast hands its output to the policy (its 2 MiB pages, no workspace): the first
    call takes 4 KiB pages, the next one, after the first output is freed, huge pages; the
    results are bitwise the same, with the hint off too, and Meta's."""
    meta = meta_module(upstream, 256, 16, grid=(64, 64))
    masks = random_masks(8, 256, 256)  # output 8 x 256 x 64 x 64 fp32 = 32 MiB

    def call():
        with torch.no_grad():
            return mask_path.mask_embed_fast(masks, *weights_of(meta), EPS, EPS, torch.float32)

    cold = call().clone()  # the output is freed once copied: the next call finds it just freed
    assert calls == []
    hinted = call()
    (addr, size, _), = calls
    start = hinted.untyped_storage().data_ptr()
    assert start <= addr and addr + size <= start + hinted.untyped_storage().nbytes()
    monkeypatch.setenv(huge_pages.HUGE_PAGES_ENV, "0")
    plain = call()
    assert len(calls) == 1
    assert torch.equal(hinted, cold) and torch.equal(hinted, plain)
    torch.testing.assert_close(hinted, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)
