"""``python -m sam2_prompt``: a self-check for users.

Prints versions, the device, which backend a call would use, and encodes a sample prompt batch on
each backend that can run here, compared with the fp64 reference (and Meta's SAM-2 if installed).
Exits non-zero if any backend disagrees with the reference.
"""

import argparse
import platform
import sys

import torch

from . import PromptEncoder, __version__, ops

TOLERANCE = 1e-5  # fp32 sparse output against the fp64 reference


def _versions() -> list:
    rows = [("sam2-prompt", __version__), ("python", platform.python_version()),
            ("torch", torch.__version__)]
    try:
        import triton

        rows.append(("triton", triton.__version__))
    except ModuleNotFoundError:
        rows.append(("triton", "not installed (PyTorch path only)"))
    try:
        import sam2  # noqa: F401
        from importlib.metadata import version

        rows.append(("sam2 (Meta, for comparison)", version("sam2")))
    except Exception:  # noqa: BLE001 - any failure just means "not available"
        rows.append(("sam2 (Meta, for comparison)", "not installed"))
    return rows


def _sample(device: torch.device):
    gen = torch.Generator().manual_seed(0)
    coords = (torch.rand(64, 5, 2, generator=gen) * 1024).to(device)
    labels = torch.randint(-1, 4, (64, 5), generator=gen).to(device)
    boxes = (torch.rand(64, 4, generator=gen) * 1024).to(device)
    return (coords, labels), boxes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sam2_prompt", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    for name, value in _versions():
        print(f"{name:28s} {value}")
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"{'device':28s} {device} ({gpu})")
    request = ops.check_backend(None)
    print(f"{'SAM2_PROMPT_BACKEND':28s} {request}")

    torch.manual_seed(0)
    encoder = PromptEncoder(256, (64, 64), (1024, 1024), 16).to(device)
    print(f"{'a call here would use':28s} {encoder.backend}")

    oracle = PromptEncoder(256, (64, 64), (1024, 1024), 16, backend="torch").double().to(device)
    oracle.load_state_dict(encoder.state_dict())
    points, boxes = _sample(device)
    with torch.no_grad():
        exact, _ = oracle(points, boxes, None)
        exact_grid = oracle.get_dense_pe()

    failures = 0
    print(f"\n{'backend':10s} {'sparse max err':>15s} {'dense max err':>15s}  result")
    for backend in ("torch", "triton"):
        reason = None if backend == "torch" else ops.triton_unavailable_reason(device, torch.float32)
        if reason is not None:
            print(f"{backend:10s} {'-':>15s} {'-':>15s}  skipped: {reason}")
            continue
        encoder.backend = backend
        with torch.no_grad():
            sparse, _ = encoder(points, boxes, None)
            grid = encoder.get_dense_pe()
        err = (sparse.double() - exact).abs().max().item()
        grid_err = (grid.double() - exact_grid).abs().max().item()
        ok = err <= TOLERANCE and grid_err <= TOLERANCE
        failures += not ok
        print(f"{backend:10s} {err:15.2e} {grid_err:15.2e}  {'ok' if ok else 'MISMATCH'}")

    try:
        from sam2.modeling.sam.prompt_encoder import PromptEncoder as MetaPromptEncoder
    except ImportError:
        MetaPromptEncoder = None
    if MetaPromptEncoder is not None:
        meta = MetaPromptEncoder(256, (64, 64), (1024, 1024), 16).to(device)
        meta.load_state_dict(encoder.state_dict())
        with torch.no_grad():
            theirs, _ = meta(points, boxes, None)
        print(f"{'meta sam2':10s} {(theirs.double() - exact).abs().max().item():15.2e}"
              f" {'':>15s}  (Meta's eager fp32, for comparison)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
