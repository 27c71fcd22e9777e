"""pytest-benchmark over the cases of ``sam2_prompt.bench.cases`` (the CLI's), one group per case.

    pytest bench/                          small cases (B <= 1024), upstream / torch / triton
    pytest bench/ --bench-large            also B = 16384 and 65536
    pytest bench/ --bench-compiled         also upstream-compiled and torch-compiled
    pytest bench/ --benchmark-disable      each benchmark runs once: a quick smoke run
    pytest bench/ --benchmark-autosave; pytest bench/ --benchmark-compare   between commits

The hook for new benchmarks: a test function in bench/tests/ that takes ``case`` and ``backend``
arguments is run over the shared grid (pytest_generate_tests below), and the ``encoder`` fixture
gives it the backend's forward, the case's inputs, and the oracle check already done.
"""

from typing import Callable, NamedTuple

import pytest
import torch

from sam2_prompt.bench import cases as bench_cases

BACKENDS = ["upstream", "torch", "triton"]
COMPILED = ["upstream-compiled", "torch-compiled"]


def pytest_addoption(parser):
    group = parser.getgroup("sam2-prompt benchmarks")
    group.addoption("--bench-large", action="store_true", default=False,
                    help="also the large cases (B = 16384 and 65536)")
    group.addoption("--bench-compiled", action="store_true", default=False,
                    help="also the torch.compile backends (compilation is done before timing)")
    group.addoption("--bench-device", default=None,
                    help="cpu or cuda (default: cuda if available, else cpu)")
    group.addoption("--bench-threads", type=int, default=1,
                    help="CPU threads during the benchmarks (default 1, as the CLI)")


def pytest_generate_tests(metafunc):
    """Tests taking ``case`` / ``backend`` run over the shared grid (unless they parametrize them)."""
    config = metafunc.config
    own = {name.strip() for marker in metafunc.definition.iter_markers("parametrize")
           for name in (marker.args[0].split(",") if isinstance(marker.args[0], str) else marker.args[0])}
    if "case" in metafunc.fixturenames and "case" not in own:
        cases = bench_cases.SMALL + (bench_cases.LARGE if config.getoption("--bench-large") else [])
        metafunc.parametrize("case", cases, ids=lambda c: c.name)
    if "backend" in metafunc.fixturenames and "backend" not in own:
        metafunc.parametrize("backend", BACKENDS + (COMPILED if config.getoption("--bench-compiled") else []))


@pytest.fixture(scope="session")
def bench_device(pytestconfig) -> str:
    device = pytestconfig.getoption("--bench-device") or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(pytestconfig.getoption("--bench-threads"))
    yield device
    torch.set_num_threads(threads)


class Encoder(NamedTuple):
    forward: Callable  # forward(points, boxes, masks) -> (sparse, dense)
    args: tuple  # (points, boxes, masks) on the device
    device: str
    max_abs_diff: float  # against the oracle (Meta's eager module)

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


@pytest.fixture
def encoder(case, backend, bench_device) -> Encoder:
    """The backend's forward for the case, already called once (compilation, caches) and checked
    against the oracle; skips when the backend cannot run here."""
    reason = bench_cases.unavailable(case, backend, bench_device)
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")
    forward = bench_cases.build(case, backend, bench_device)
    args = case.inputs(bench_device)
    _, expected = bench_cases.oracle(case, bench_device)
    with torch.no_grad():
        outputs = bench_cases.keep(forward(*args))
    diff = bench_cases.check_agreement(case, backend, outputs, expected)
    return Encoder(forward, args, bench_device, diff)
