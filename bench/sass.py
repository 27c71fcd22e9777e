"""`sam2-prompt-bench sass`: the kernel engineer's static report (aot.compile_variants +
format_table), for any CUDA architecture, without a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

from .cli import UsageError


def cmd_sass(args) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # The interpreter replaces @triton.jit kernels: compile in a clean child process.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        argv = ["sass", "--arch", ",".join(args.arch)] + (["--json", args.json] if args.json else []) + \
            (["--dump-dir", args.dump_dir] if args.dump_dir else [])
        return subprocess.call([sys.executable, "-m", "sam2_prompt.bench.cli", *argv], env=env)
    # Triton 3.9 warns when this is unset; 1 is its current default (the kernels use explicit FMAs).
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    try:
        from sam2_prompt.kernels import aot
    except ModuleNotFoundError as err:
        raise UsageError(f"sass needs Triton ({err}): pip install 'sam2-prompt[triton]'")
    rows = aot.compile_variants(args.arch, args.dump_dir)
    print(aot.format_table(rows))
    if args.json:
        from . import measure

        Path(args.json).write_text(json.dumps({"machine": measure.machine(), "kernels": rows}, indent=2))
    return 0
