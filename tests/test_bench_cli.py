"""The benchmark CLI and suite: they parse, run a tiny case and write what they promise."""

import json
import os
import subprocess
import sys
from pathlib import Path

from sam2_prompt.bench import cli

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"case", "backend", "device", "dtype", "batch", "points", "embed_dim", "median_s",
            "q20_s", "q80_s", "points_per_s", "bytes_allocated", "speedup_vs_upstream"}


def test_run_writes_json_and_csv(tmp_path, capsys):
    out_json, out_csv = tmp_path / "r.json", tmp_path / "r.csv"
    assert cli.main(["run", "--batch", "2", "--points", "3", "--boxes", "0,1",
                     "--backends", "upstream,torch", "--device", "cpu", "--min-run-time", "0.01",
                     "--json", str(out_json), "--csv", str(out_csv)]) == 0
    payload = json.loads(out_json.read_text())
    assert {"cpu", "cores", "torch", "triton", "sam2_prompt", "git_commit"} <= set(payload["machine"])
    rows = payload["results"]
    assert len(rows) == 4 and all(REQUIRED <= set(r) for r in rows)
    ours = [r for r in rows if r["backend"] == "torch"]
    assert all(r["speedup_vs_upstream"] > 0 and r["max_abs_diff"] < 2e-5 for r in ours)
    assert out_csv.read_text().splitlines()[0].startswith("case,backend,device")
    assert "speedup" in capsys.readouterr().out


def test_foundation_targets_are_checked(capsys):
    rows = [{"case": "click", "backend": "torch", "speedup_vs_upstream": 2.5, "alloc_x_output": 1.1},
            {"case": "amg-16384x4", "backend": "torch", "speedup_vs_upstream": 4.0,
             "alloc_x_output": 1.7}]
    lines = cli.check_targets(rows)
    assert lines[0].startswith("PASS  click") and lines[2].startswith("FAIL  amg-16384x4")
    assert lines[3].startswith("FAIL")


def test_model_prints_a_labelled_model(capsys):
    assert cli.main(["model", "--gpu", "A100", "--batch", "64", "--points", "2"]) == 0
    out = capsys.readouterr().out
    assert "MODEL (not a measurement)" in out and "triton" in out and "upstream" in out


def test_unknown_backend_is_refused():
    try:
        cli.main(["run", "--backends", "fastest"])
    except SystemExit as exit:
        assert "unknown backend" in str(exit)
    else:
        raise AssertionError("an unknown backend must be refused")


def test_sass_subcommand(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-m", "sam2_prompt.bench.cli", "sass", "--arch", "sm_90",
                    "--json", str(tmp_path / "k.json"), "--dump-dir", str(tmp_path / "cubins")],
                   check=True, env=env, capture_output=True)
    rows = json.loads((tmp_path / "k.json").read_text())["kernels"]
    main = [r for r in rows if r["kernel"].startswith("sparse") and r["out_dtype"] == "float32"
            and r["embed_dim"] == 256 and r["kernel"] == "sparse_fwd"]
    assert main and (tmp_path / "cubins" / main[0]["cubin"]).exists()


def test_pytest_benchmark_suite_smoke():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "bench"), "--benchmark-disable"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
