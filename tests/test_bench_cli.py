"""The benchmark CLI and suite: they parse, run a tiny case and write what they promise."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import env_without_interpreter
from sam2_prompt.bench import cases as bench_cases
from sam2_prompt.bench import cli

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"case", "backend", "device", "dtype", "batch", "points", "embed_dim", "median_s",
            "q20_s", "q80_s", "points_per_s", "bytes_allocated", "speedup_vs_upstream"}
MACHINE = {"cpu", "cores", "gpu", "python", "torch", "triton", "sam2_prompt", "git_commit"}
TINY = ["run", "--batch", "2", "--points", "3", "--boxes", "0,1", "--device", "cpu",
        "--min-run-time", "0.01", "--min-samples", "2", "--no-progress"]
needs_upstream = pytest.mark.skipif(bench_cases.upstream_class() is None, reason="Meta's sam2 not installed")


@needs_upstream
def test_run_writes_json_and_csv(tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    threads = torch.get_num_threads()
    assert cli.main(TINY + ["--backends", "upstream,torch,triton", "--json", str(out_json),
                            "--csv", str(out_csv)]) == 0
    payload = json.loads(out_json.read_text())
    assert MACHINE <= set(payload["machine"])
    assert payload["settings"]["oracles"] == ["upstream eager fp32"]
    assert torch.get_num_threads() == threads  # the run's thread setting does not leak
    rows = payload["results"]
    assert [(r["case"], r["backend"]) for r in rows] == [
        ("b2-n3", "upstream"), ("b2-n3", "torch"), ("b2-n3-k1", "upstream"), ("b2-n3-k1", "torch")]
    assert all(REQUIRED <= set(r) for r in rows)
    assert all(r["median_s"] > 0 and r["q20_s"] <= r["median_s"] <= r["q80_s"] for r in rows)
    assert all(r["bytes_allocated"] > 0 and r["max_abs_diff"] < 1e-4 for r in rows)
    assert all(r["speedup_vs_upstream"] > 0 for r in rows)
    assert [r["speedup_vs_upstream"] for r in rows if r["backend"] == "upstream"] == [1.0, 1.0]
    with open(out_csv) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 4 and REQUIRED <= set(table[0])
    out = capsys.readouterr().out
    assert "no triton rows" in out  # a backend that cannot run is named, not silently dropped
    assert out.rstrip().splitlines()[-1].lstrip().startswith("b2-n3-k1")  # ends with the table


def test_no_arguments_is_a_quick_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(cli, "cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main([]) == 0
    assert seen["command"] == "run" and seen["quick"] and seen["device"] is None


def test_case_sets_are_the_foundation_targets():
    assert {(c.name, c.batch, c.points, c.boxes, c.embed_dim, c.dtype) for c in bench_cases.FOUNDATION} == {
        ("click", 1, 1, 0, 256, "float32"), ("amg-16384x4", 16384, 4, 0, 256, "float32")}
    assert set(bench_cases.TARGETS) == {c.name for c in bench_cases.FOUNDATION}
    assert set(bench_cases.FOUNDATION) <= set(bench_cases.QUICK)
    assert all(c.batch <= 1024 for c in bench_cases.SMALL)


def _row(case, speedup, alloc, backend="torch"):
    return {"case": case, "backend": backend, "device": "cpu", "batch": 1, "points": 1,
            "speedup_vs_upstream": speedup, "alloc_x_output": alloc}


def test_targets_are_checked():
    results = cli.check_targets([_row("click", 1.0, 15.0, "upstream"), _row("click", 2.5, 1.1),
                                 _row("amg-16384x4", 4.0, 1.7), _row("batch-64x4", 9.0, 9.0)])
    assert [ok for ok, _ in results] == [True, True, False, False]
    assert "2.50x faster" in results[0][1] and "1.70x the output" in results[3][1]


def test_foundation_exit_status(monkeypatch, capsys):
    rows = [_row("click", 2.5, 1.1), _row("amg-16384x4", 6.0, 1.0)]
    fill = {"dtype": "float32", "median_s": 1e-3, "q20_s": 1e-3, "q80_s": 1e-3, "prompts_per_s": 1.0,
            "points_per_s": 1.0, "gb_per_s": 1.0, "max_abs_diff": 0.0, "oracle": "test"}
    monkeypatch.setattr(cli, "run_cases", lambda *a, **k: [dict(r, **fill) for r in rows])
    assert cli.main(["run", "--foundation", "--device", "cpu"]) == 0
    rows[1]["speedup_vs_upstream"] = 4.0
    assert cli.main(["run", "--foundation", "--device", "cpu"]) == 1
    assert "FAIL  amg-16384x4" in capsys.readouterr().out


@needs_upstream
def test_a_backend_that_computes_something_else_fails_loudly(monkeypatch):
    build = bench_cases.build

    def off_by_a_little(case, backend, device, compile_options=None):
        forward = build(case, backend, device, compile_options)
        if backend != "torch":
            return forward
        return lambda *args: (forward(*args)[0] + 1e-2, forward(*args)[1])

    monkeypatch.setattr(bench_cases, "build", off_by_a_little)
    with pytest.raises(bench_cases.OutputMismatch, match="b2-n3 / torch: sparse output differs"):
        cli.main(TINY + ["--boxes", "0", "--backends", "upstream,torch"])


def test_agreement_check_catches_nan_and_shapes():
    case = bench_cases.make(2, 1)
    good = (torch.zeros(2, 2, 8), torch.zeros(1, 8, 4, 4).expand(2, 8, 4, 4))
    assert bench_cases.check_agreement(case, "x", good, good) == 0.0
    with pytest.raises(bench_cases.OutputMismatch, match="differs"):
        bench_cases.check_agreement(case, "x", (good[0].clone().fill_(float("nan")), good[1]), good)
    with pytest.raises(bench_cases.OutputMismatch, match="shape"):
        bench_cases.check_agreement(case, "x", (good[0][:, :1], good[1]), good)


@needs_upstream
def test_plot(monkeypatch, tmp_path):
    """A PNG with matplotlib (the 'plot' extra); without it, a clear message before any timing."""
    png = tmp_path / "p.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert cli.main(TINY + ["--boxes", "0", "--backends", "upstream,torch", "--plot", str(png)]) == 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        return
    monkeypatch.setattr(cli, "run_cases", lambda *a, **k: pytest.fail("ran before checking --plot"))
    with pytest.raises(SystemExit, match=r"sam2-prompt\[plot\]"):
        cli.main(TINY + ["--plot", str(png)])


def test_unknown_backend_is_refused():
    with pytest.raises(SystemExit, match="unknown backend"):
        cli.main(["run", "--backends", "fastest"])


@needs_upstream
def test_model_prints_a_labelled_model(tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert cli.main(["model", "--gpu", "A100", "--batch", "64", "--points", "2",
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "MODEL (not a measurement)" in out and "2.0 TB/s" in out
    rows = {r["backend"]: r for r in json.loads(out_json.read_text())["results"]}
    assert set(rows) == {"upstream", "torch", "triton"}
    assert rows["triton"]["launches"] == 1 < rows["torch"]["launches"] < rows["upstream"]["launches"]
    assert rows["triton"]["written_bytes"] == 64 * 3 * 256 * 4
    assert rows["upstream"]["alloc_x_output"] > 10 > 1.5 > rows["torch"]["alloc_x_output"]


# The CLI's sass command end to end, compiling one variant (the main sparse kernel) rather than
# all: tests/test_aot.py compiles and checks every variant. compile_variants has no filter, so the
# child process narrows the kernel module's variant list.
ONE_VARIANT = """
import sys
from sam2_prompt.kernels import aot
every = aot.variants
aot.variants = lambda: [v for v in every() if v[0] == "sparse_fwd"][:1]
from sam2_prompt.bench import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="sass needs Triton")
def test_sass_subcommand(tmp_path):
    env = env_without_interpreter()
    result = subprocess.run([sys.executable, "-c", ONE_VARIANT, "sass", "--arch", "sm_80,sm_90",
                             "--json", str(tmp_path / "k.json"), "--dump-dir", str(tmp_path / "cubins")],
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "k.json").read_text())["kernels"]
    keys = {"kernel", "arch", "out_dtype", "embed_dim", "num_warps", "elements_per_program", "cubin",
            "registers", "stack_bytes", "local_bytes", "shared_bytes", "sass_instructions",
            "backward_branches", "lane_instr_per_element", "widest_store_bits",
            "modelled_h100_us_per_mpoint"}
    assert [(r["kernel"], r["arch"]) for r in rows] == [("sparse_fwd", "sm_80"), ("sparse_fwd", "sm_90")]
    assert all(keys <= set(r) for r in rows)
    assert all((tmp_path / "cubins" / r["cubin"]).exists() for r in rows)
    assert "sparse_fwd" in result.stdout and "sm_90" in result.stdout


def test_pytest_benchmark_suite_smoke():
    env = env_without_interpreter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "bench"), "--benchmark-disable"],
                            cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
