"""The benchmark CLI and suite: they parse, run a tiny case and write what they promise."""

import argparse
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
from sam2_prompt.bench import plot as bench_plot
from sam2_prompt.bench import run as bench_run

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
    # the default backends (upstream,torch,triton): triton cannot run on a CPU, which is a note
    assert cli.main(TINY + ["--json", str(out_json), "--csv", str(out_csv)]) == 0
    payload = json.loads(out_json.read_text())
    assert MACHINE <= set(payload["machine"])
    assert payload["settings"]["oracles"] == ["upstream eager fp32"]
    assert payload["settings"]["backends"] == ["upstream", "torch"]
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
    assert "note: no triton rows" in out  # a backend that cannot run is named, not silently dropped
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["case", "backend"])
    assert [line.split()[:2] for line in lines[header + 2:header + 6]] == [
        ["b2-n3", "upstream"], ["b2-n3", "torch"], ["b2-n3-k1", "upstream"], ["b2-n3-k1", "torch"]]
    legend = lines[lines.index("Columns:") + 1:]  # the legend follows the table and ends the output
    assert [line.split()[0] for line in legend] == [
        c for c in lines[header].split() if c not in ("case", "backend")]
    assert "PASS" not in out and "FAIL" not in out  # targets only when asked


def test_a_requested_backend_that_cannot_run_is_an_error(monkeypatch, capsys):
    monkeypatch.setattr(bench_run, "run_cases", lambda *a, **k: pytest.fail("timed before refusing"))
    assert cli.main(TINY + ["--backends", "torch,triton"]) == 2
    err = capsys.readouterr().err
    assert "backend 'triton' cannot run on cpu" in err and "CUDA" in err


def test_no_arguments_is_a_quick_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(bench_run, "cmd_run", lambda args: seen.update(vars(args)) or 0)
    assert cli.main([]) == 0
    assert seen["command"] == "run" and seen["quick"] and seen["device"] is None
    assert not seen["check_targets"] and seen["backends"] is None


def test_case_sets_are_the_foundation_targets():
    assert {(c.name, c.batch, c.points, c.boxes, c.embed_dim, c.dtype) for c in bench_cases.FOUNDATION} == {
        ("click", 1, 1, 0, 256, "float32"), ("amg-16384x4", 16384, 4, 0, 256, "float32")}
    assert set(bench_cases.TARGETS) == {c.name for c in bench_cases.FOUNDATION} | {"b64-n0-mask"}
    assert bench_cases.MASKS.name == "b64-n0-mask" and bench_cases.MASKS.masks
    assert (bench_cases.MASKS.batch, bench_cases.MASKS.points, bench_cases.MASKS.boxes) == (64, 0, 0)
    assert set(bench_cases.FOUNDATION) <= set(bench_cases.QUICK)
    assert all(c.batch <= 1024 for c in bench_cases.SMALL)


def test_the_parser_mirrors_the_cases():
    """cli.py imports no torch, so it repeats these names of cases.py: they must agree."""
    assert cli.BACKENDS == bench_cases.BACKENDS
    assert cli.ECOSYSTEM_BACKENDS == bench_cases.ECOSYSTEM_BACKENDS
    assert set(cli.DEFAULT_BACKENDS) | set(cli.FOUNDATION_BACKENDS) <= set(bench_cases.BACKENDS)
    assert cli.DTYPES == tuple(bench_cases.TOLERANCES)
    assert cli.COMPILE_MODE == bench_cases.COMPILE_OPTIONS["mode"]
    assert all(cli.SWEEP_DEFAULTS[k] == bench_cases.SWEEP_DEFAULTS[k] for k in cli.SWEEP_DEFAULTS)


def _row(case, speedup, alloc, backend="torch"):
    return {"case": case, "backend": backend, "device": "cpu", "batch": 1, "points": 1,
            "speedup_vs_upstream": speedup, "alloc_x_output": alloc}


def test_targets_are_checked():
    results = bench_run.check_targets([_row("click", 1.0, 15.0, "upstream"), _row("click", 2.5, 1.1),
                                       _row("amg-16384x4", 4.0, 1.7), _row("batch-64x4", 9.0, 9.0),
                                       _row("b64-n0-mask", 3.5, 1.3)])
    assert [ok for ok, _ in results] == [True, True, False, False, True, False]
    assert "2.50x faster" in results[0][1] and "1.70x the output" in results[3][1]
    assert "(target <= 1.2x)" in results[5][1]


def test_targets_only_when_asked(monkeypatch, capsys):
    """--foundation and --check-targets print PASS/FAIL and exit 1 on a FAIL; a plain run neither."""
    rows = [_row("click", 2.5, 1.1), _row("amg-16384x4", 6.0, 1.0)]
    fill = {"dtype": "float32", "median_s": 1e-3, "q20_s": 1e-3, "q80_s": 1e-3, "prompts_per_s": 1.0,
            "points_per_s": 1.0, "gb_per_s": 1.0, "max_abs_diff": 0.0, "oracle": "test"}
    monkeypatch.setattr(bench_run, "run_cases", lambda case_list, *a, **k: [
        dict(r, **fill) for r in rows if r["case"] in {c.name for c in case_list}])
    assert cli.main(["run", "--foundation", "--device", "cpu"]) == 0
    assert "all 4 targets passed" in capsys.readouterr().out
    rows[1]["speedup_vs_upstream"] = 4.0
    assert cli.main(["run", "--foundation", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  amg-16384x4" in out and out.rstrip().endswith("1 of 4 targets failed")
    assert cli.main(["run", "--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PASS" not in out and "FAIL" not in out and "Columns:" in out
    assert cli.main(["run", "--quick", "--check-targets", "--device", "cpu"]) == 1
    assert cli.main(["run", "--quick", "--check-targets", "--device", "cpu", "--cases", "batch"]) == 1
    assert "NOT CHECKED" in capsys.readouterr().out  # asked for, but no target case ran

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
def test_plot_end_to_end(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    assert cli.main(TINY + ["--boxes", "0", "--backends", "upstream,torch", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_has_a_linear_speedup_panel_per_case(monkeypatch, tmp_path):
    """Speedups from 1x to 500x, each case in its own panel on a linear axis: every bar is drawn
    at its own value, and a case without an upstream row shows its times, labelled so."""
    matplotlib = pytest.importorskip("matplotlib")
    import matplotlib.figure

    rows = [{"case": case, "backend": backend, "median_s": median, "speedup_vs_upstream": speedup}
            for case, backend, median, speedup in [
                ("click", "upstream", 3e-4, 1.0), ("click", "torch", 1.5e-4, 2.0),
                ("big", "upstream", 1.0, 1.0), ("big", "torch", 0.1, 10.0), ("big", "triton", 2e-3, 500.0),
                ("k2", "torch", 2e-3, None), ("k2", "triton", 1e-4, None)]]
    figures = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: figures.append(fig) or save(fig, *a, **k))
    bench_plot.plot(rows, tmp_path / "p.png", "title")
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["click", "big", "k2"]
    widths = [[bar.get_width() for bar in ax.patches] for ax in panels]
    assert widths == [[1.0, 2.0], [1.0, 10.0, 500.0], [2.0, 0.1]]
    assert all(ax.get_xscale() == "linear" and ax.get_xlim()[0] == 0 for ax in panels)
    assert "speedup" in panels[0].get_xlabel() and "no upstream row" in panels[2].get_xlabel()
    assert [t.get_text() for t in panels[1].get_yticklabels()] == ["upstream", "torch", "triton"]


def test_plot_without_matplotlib_stops_before_timing(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ModuleNotFoundError
    monkeypatch.setattr(bench_run, "run_cases", lambda *a, **k: pytest.fail("ran before checking --plot"))
    assert cli.main(TINY + ["--plot", str(tmp_path / "p.png")]) == 2
    assert "pip install 'sam2-prompt[plot]'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["run", "--backends", "fastest"], "unknown fastest; choose from upstream"),
    (["run", "--batch", "1,x"], "expected comma-separated integers"),
    (["run", "--dtype", "float64"], "unknown float64"),
    (["run", "--device", "gpu"], "expected cpu, cuda or cuda:N"),
    (["run", "--threads", "0"], "must be >= 1"),
    (["sass", "--arch", "80"], "expected sm_XY names"),
    (["model", "--gpu", "V100"], "invalid choice"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_every_option_has_help():
    parsers = [cli.parser()]
    parsers += [sub for action in parsers[0]._actions
                if isinstance(action, argparse._SubParsersAction)
                for sub in action.choices.values()]
    assert len(parsers) == 5
    missing = [(p.prog, a.option_strings) for p in parsers for a in p._actions
               if a.option_strings and not a.help]
    assert not missing


# Each line runs in a fresh interpreter: the CLI must answer without importing these.
HEAVY = ("torch", "triton", "sam2", "numpy", "sam2_prompt.ops", "sam2_prompt.bench.cases")
NO_HEAVY_IMPORTS = """
import sys
from sam2_prompt.bench import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = [m for m in {heavy!r} if m in sys.modules]
assert not heavy, f"imported {{heavy}}"
sys.exit(code)
"""


@pytest.mark.parametrize("argv, code", [
    (["--help"], 0), (["run", "--help"], 0), (["sass", "--help"], 0), (["model", "--help"], 0),
    (["host", "--help"], 0), (["host", "--arch", "sm_80,sm_90"], 2),
    (["run", "--bogus"], 2), (["run", "--backends", "fastest"], 2), (["model", "--batch", "x"], 2),
])
def test_help_and_argument_errors_import_no_torch(argv, code):
    result = subprocess.run([sys.executable, "-c", NO_HEAVY_IMPORTS.format(heavy=HEAVY), *argv],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == code, result.stderr[-2000:]
    assert "usage: sam2-prompt-bench" in result.stdout + result.stderr


def test_console_script_help(tmp_path):
    """The installed entry point itself (what a user types), in a fresh process."""
    script = Path(sys.executable).with_name("sam2-prompt-bench")
    if not script.exists():
        pytest.skip(f"{script} is not installed (pip install -e .)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and "Exit status" in result.stdout, result.stderr[-2000:]


@needs_upstream
def test_model_prints_a_labelled_model(tmp_path, capsys):
    out_json = tmp_path / "m.json"
    assert cli.main(["model", "--gpu", "A100", "--batch", "64", "--points", "2",
                     "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "MODEL (not a measurement)" in out and "2.039 TB/s" in out  # kernels/gpus.py's A100
    rows = {r["backend"]: r for r in json.loads(out_json.read_text())["results"]}
    assert set(rows) == {"upstream", "torch", "triton"}
    assert rows["triton"]["launches"] == 1 < rows["torch"]["launches"] < rows["upstream"]["launches"]
    assert rows["triton"]["written_bytes"] == 64 * 3 * 256 * 4
    assert rows["upstream"]["alloc_x_output"] > 10 > 1.5 > rows["torch"]["alloc_x_output"]


def test_one_source_of_gpu_figures():
    """`model --gpu`, the bandwidth lookup of `run` and the static report read kernels/gpus.py;
    `sass`'s default architectures are the report's (aot.DEFAULT_ARCHS, mirrored torch-free)."""
    from sam2_prompt.bench import measure
    from sam2_prompt.kernels import gpus

    assert cli.GPUS is gpus.GPUS and {"A100", "H100", "H200"} <= set(cli.GPUS)
    assert not hasattr(measure, "SPEC_BANDWIDTH")
    assert gpus.bandwidth_for_device_name("NVIDIA H100 80GB HBM3") == gpus.GPUS["H100"].bytes_per_s
    assert cli.parser().parse_args(["sass"]).arch == cli.SASS_ARCHS
    if importlib.util.find_spec("triton") is not None:
        from sam2_prompt.kernels import aot

        assert cli.SASS_ARCHS == aot.DEFAULT_ARCHS


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="host needs Triton")
@needs_upstream
def test_host_subcommand(tmp_path, capsys):
    """`host` under TRITON_INTERPRET (as the tests run) measures in a child process without it:
    rows for every case and backend, the click's targets checked when asked."""
    out_json = tmp_path / "h.json"
    code = cli.main(["host", "--rounds", "1", "--json", str(out_json), "--check-targets"])
    assert code in (0, 1)  # one round on a busy machine: the targets may or may not hold
    payload = json.loads(out_json.read_text())
    rows = payload["results"]
    assert [(r["case"], r["backend"]) for r in rows] == [
        (case, backend) for case in ("click", "64x1", "1024x4")
        for backend in ("triton", "torch", "upstream")]
    assert all(r["host_us"] > 0 and r["python_calls"] > 0 for r in rows)
    assert payload["settings"]["arch"] == "sm_90" and MACHINE <= set(payload["machine"])


def test_model_needs_tokens(capsys):
    assert cli.main(["model", "--points", "0", "--boxes", "0"]) == 2
    assert "give --points, --boxes or --masks" in capsys.readouterr().err


def test_model_covers_mask_batches(tmp_path, capsys):
    """Mask prompts: Meta's conv stack counted op by op, the fused path one launch that reads
    each mask pixel once and writes the dense output once; 16 masks, where the PyTorch path
    takes its fast path (2^24 outputs)."""
    out_json = tmp_path / "m.json"
    assert cli.main(["model", "--batch", "16", "--points", "0", "--masks", "--embed-dim", "256",
                     "--json", str(out_json)]) == 0
    rows = {r["backend"]: r for r in json.loads(out_json.read_text())["results"]}
    dense = 16 * 256 * 64 * 64 * 4
    assert rows["triton"]["launches"] == 1 and rows["triton"]["written_bytes"] == dense
    assert rows["triton"]["read_bytes"] == 16 * 256 * 256 * 4
    assert rows["upstream"]["launches"] > 5 and rows["upstream"]["written_bytes"] > 2 * dense
    assert rows["torch"]["alloc_x_output"] < 1.2 < rows["upstream"]["alloc_x_output"]


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
