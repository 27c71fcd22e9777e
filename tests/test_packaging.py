"""The wheel: one top-level import package, sam2_prompt (kernels and bench inside), no test files,
the Apache-2.0 licence text, and metadata that tells pip the truth."""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# sha256 of https://www.apache.org/licenses/LICENSE-2.0.txt (Debian's common-licenses/Apache-2.0)
APACHE_2_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """Built from a copy of the sources: setuptools builds in the tree's build/, whose stale files
    (a module since moved away) would end up in the wheel."""
    source, out = tmp_path_factory.mktemp("source") / "sam2-prompt", tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".benchmarks", ".pytest_cache", "out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(source)], check=True)
    (path,) = out.glob("sam2_prompt-*.whl")
    return zipfile.ZipFile(path)


def _metadata(wheel: zipfile.ZipFile) -> str:
    return wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()


def test_wheel_top_level_names(wheel):
    names = wheel.namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"sam2_prompt"}, top
    # every module of the three packages, the CLI's included (an explicit packages list)
    for folder, package in (("sam2_prompt", "sam2_prompt"), ("kernels", "sam2_prompt/kernels"),
                            ("bench", "sam2_prompt/bench")):
        for module in (ROOT / folder).glob("*.py"):
            assert f"{package}/{module.name}" in names, module


def test_wheel_installs_no_tests(wheel):
    py = [n for n in wheel.namelist() if n.endswith(".py")]
    tests = [n for n in py if Path(n).name.startswith("test_") or Path(n).name == "conftest.py"]
    assert not tests, tests
    assert not [n for n in py if "/tests/" in n]
    # ... while the pytest-benchmark suite is still in the repository, for `pytest bench/`
    assert (ROOT / "bench" / "tests" / "conftest.py").exists()
    assert list((ROOT / "bench" / "tests").glob("test_bench_*.py"))


def test_wheel_metadata(wheel):
    metadata = _metadata(wheel)
    lines = metadata.splitlines()
    assert "Requires-Python: >=3.10" in lines  # torch 2.13 and sam2 1.1.0 need 3.10
    assert "License-Expression: Apache-2.0" in lines
    assert "Requires-Dist: torch>=2.6" in lines
    assert "Requires-Dist: numpy" in lines
    assert not any(line.startswith("Requires-Dist: triton") and "extra" not in line
                   for line in lines)  # Triton only as an extra
    for extra in ("triton", "plot", "onnx", "test"):
        assert f"Provides-Extra: {extra}" in lines


def test_licence_is_apache_2(wheel):
    """The LICENSE file is the full Apache-2.0 text, the licence the metadata declares, and it
    ships in the wheel."""
    text = (ROOT / "LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_SHA256
    assert "License-File: LICENSE" in _metadata(wheel).splitlines()
    (shipped,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    assert wheel.read(shipped) == text


def test_console_script_declared():
    import importlib.metadata as md

    scripts = {ep.name: ep.value for ep in md.entry_points(group="console_scripts")}
    assert scripts.get("sam2-prompt-bench") == "sam2_prompt.bench.cli:main"
