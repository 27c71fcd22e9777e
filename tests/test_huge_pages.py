"""The huge-page hint on the mask path's large CPU outputs (sam2_prompt/huge_pages.py).

The hint changes no value, so what is tested is that it reaches the kernel for exactly the memory
it names: the mapping that holds a large fresh tensor carries Linux's ``hg`` flag (MADV_HUGEPAGE)
in /proc/self/smaps afterwards, and only then; the mask path gives it its output and nothing else;
and results are bitwise the same with it turned off.
"""

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


def big_tensor():
    """A fresh 64 MiB CPU tensor (over MIN_BYTES, so it spans whole 2 MiB pages)."""
    return torch.empty(16 << 20, dtype=torch.float32)


def first_huge_page(t) -> int:
    return -(-t.untyped_storage().data_ptr() // huge_pages.HUGE_PAGE) * huge_pages.HUGE_PAGE


@needs_thp
def test_hint_flags_the_tensors_mapping(monkeypatch):
    monkeypatch.delenv(huge_pages.HUGE_PAGES_ENV, raising=False)
    t = big_tensor()
    inside = first_huge_page(t)
    assert "hg" not in vm_flags(inside)
    assert huge_pages.advise_huge_pages(t)
    assert "hg" in vm_flags(inside)
    t.fill_(1.5)  # the memory behaves as any other
    assert t.sum().item() == 1.5 * t.numel()


@needs_thp
def test_hint_off_small_or_not_cpu(monkeypatch):
    monkeypatch.setenv(huge_pages.HUGE_PAGES_ENV, "0")
    t = big_tensor()
    assert not huge_pages.advise_huge_pages(t)
    assert "hg" not in vm_flags(first_huge_page(t))
    monkeypatch.delenv(huge_pages.HUGE_PAGES_ENV)
    assert not huge_pages.advise_huge_pages(torch.empty(1 << 20))  # 4 MiB: under MIN_BYTES
    assert not huge_pages.advise_huge_pages(torch.empty(16 << 20, device="meta"))


def test_mask_path_hints_its_output_only(upstream, monkeypatch):
    """mask_embed_fast gives the hint for its output (its 2 MiB pages, nothing outside it) and
    for no workspace; the result is bitwise the same with the hint off, and Meta's."""
    calls = []
    monkeypatch.setattr(huge_pages, "_madvise",
                        lambda addr, size, advice: calls.append((addr, size, advice)) or 0)
    meta = meta_module(upstream, 256, 16, grid=(64, 64))
    masks = random_masks(8, 256, 256)  # output 8 x 256 x 64 x 64 fp32 = 32 MiB
    with torch.no_grad():
        hinted = mask_path.mask_embed_fast(masks, *weights_of(meta), EPS, EPS, torch.float32)
    assert len(calls) == 1
    addr, size, advice = calls[0]
    start = hinted.untyped_storage().data_ptr()
    assert advice == 14 and addr % huge_pages.HUGE_PAGE == 0 and size % huge_pages.HUGE_PAGE == 0
    assert start <= addr and addr + size <= start + hinted.untyped_storage().nbytes()
    assert size >= hinted.untyped_storage().nbytes() - 2 * huge_pages.HUGE_PAGE

    monkeypatch.setenv(huge_pages.HUGE_PAGES_ENV, "0")
    with torch.no_grad():
        plain = mask_path.mask_embed_fast(masks, *weights_of(meta), EPS, EPS, torch.float32)
    assert len(calls) == 1
    assert torch.equal(hinted, plain)
    torch.testing.assert_close(hinted, meta_forward(meta, masks), atol=FP32_ATOL, rtol=0)
