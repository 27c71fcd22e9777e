"""The wheel installs exactly one top-level import package, sam2_prompt (kernels and bench inside)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_top_level_names(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("sam2_prompt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"sam2_prompt"}, top
    for module in ("sam2_prompt/__init__.py", "sam2_prompt/kernels/__init__.py",
                   "sam2_prompt/bench/__init__.py"):
        assert module in names, module
    metadata = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "Requires-Dist: torch>=2.6" in metadata
    assert "Requires-Dist: numpy" in metadata
    assert not any(line.startswith("Requires-Dist: triton") and "extra" not in line
                   for line in metadata.splitlines())  # Triton only as an extra


def test_console_script_declared():
    import importlib.metadata as md

    scripts = {ep.name: ep.value for ep in md.entry_points(group="console_scripts")}
    assert scripts.get("sam2-prompt-bench") == "sam2_prompt.bench.cli:main"
