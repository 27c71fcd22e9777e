"""sam2-prompt-bench: our PromptEncoder against Meta's, side by side in one process.

    sam2-prompt-bench                 run --quick on the best device: the comparison table
    sam2-prompt-bench run ...         time the backends (--quick, --foundation, or a sweep)
    sam2-prompt-bench sass ...        compile every Triton kernel variant: static SASS report
    sam2-prompt-bench model ...       a roofline MODEL of bytes and launches per backend
    sam2-prompt-bench host ...        host time per eager call, the GPU path without a GPU

Exit status: 0 done; 1 a target failed or could not be checked (--check-targets, --foundation);
2 the command cannot run as asked (bad arguments, a requested backend or an optional package
missing here). `sam2-prompt-bench COMMAND --help` lists each command's options.
"""

import argparse
import importlib
import re
import sys

from ..kernels.gpus import GPUS  # the spec figures of every GPU the reports model (no torch)

# This module imports no torch, triton or sam2: --help and argument errors answer at once, and
# each command imports what it needs when it runs. The names below mirror sam2_prompt.bench.cases
# (which imports torch); tests/test_bench_cli.py checks that they agree.
BACKENDS = ("upstream", "upstream-compiled", "torch", "torch-compiled", "triton")
# Other pipelines' encoders (theirs) and our drop-ins for them, when those packages are installed.
ECOSYSTEM_BACKENDS = ("transformers", "transformers-torch", "transformers-triton",
                      "ultralytics", "ultralytics-torch", "ultralytics-triton")
DEFAULT_BACKENDS = ("upstream", "torch", "triton")
FOUNDATION_BACKENDS = ("upstream", "torch")
DTYPES = ("float32", "bfloat16", "float16")
SWEEP_DEFAULTS = {"batches": (1, 8, 64, 1024, 16384, 65536), "points": (1, 4, 16), "boxes": (0, 1),
                  "embed_dims": (256,)}
COMPILE_MODE = "max-autotune"
# `sass`'s default architectures: sam2_prompt.kernels.aot.DEFAULT_ARCHS (which imports triton)
SASS_ARCHS = ("sm_80", "sm_90", "sm_100", "sm_120")
LAUNCH_US = 4.0  # `model`'s stated cost of one kernel launch (eager host overhead per op is larger)

# command -> "module:function" run with the parsed arguments, imported only when chosen
COMMANDS = {"run": "run:cmd_run", "sass": "sass:cmd_sass", "model": "model:cmd_model",
            "host": "host:cmd_host"}


class UsageError(Exception):
    """The command cannot run as asked: main prints the message and exits with status 2."""


# ----------------------------------------------------------------------------- argument types
def _int_list(minimum: int):
    def parse(text: str):
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
        if any(v < minimum for v in values):
            raise argparse.ArgumentTypeError(f"every value must be >= {minimum}, got {text!r}")
        return values
    return parse


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def _choice_list(choices):
    def parse(text: str):
        values = tuple(v.strip() for v in text.split(","))
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        return values
    return parse


def _device(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def _archs(text: str):
    values = tuple(v.strip().lower() for v in text.split(","))
    bad = [v for v in values if not re.fullmatch(r"sm_\d{2,3}", v)]
    if bad:
        raise argparse.ArgumentTypeError(f"expected sm_XY names such as sm_80,sm_90, got {', '.join(bad)}")
    return values


def _arch(text: str) -> str:
    (value,) = _archs(text) if "," not in text else (None,)
    if value is None:
        raise argparse.ArgumentTypeError(f"expected one sm_XY name, got {text!r}")
    return value


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


# ----------------------------------------------------------------------------- parser
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam2-prompt-bench", description=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(sub)
    _add_sass(sub)
    _add_model(sub)
    _add_host(sub)
    return p


def _add_run(sub) -> None:
    run = sub.add_parser(
        "run", help="time the backends side by side (each checked against Meta's outputs first)",
        description="Time the backends side by side on one device. Every backend's outputs are "
                    "checked against Meta's eager module (the oracle) before it is timed. Prints "
                    "the machine, the table and a legend of its columns.")
    which = run.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true",
                       help="the quick case set, the default run: 6 cases from one click to 16384 "
                            "prompts of 4 points, with boxes (under a minute on 2 CPU cores)")
    which.add_argument("--foundation", action="store_true",
                       help="only the two foundation cases (click, amg-16384x4) with upstream,torch; "
                            "implies --check-targets")
    d = SWEEP_DEFAULTS
    sweep = run.add_argument_group("sweep (used when neither --quick nor --foundation is given; "
                                   "default in brackets)")
    sweep.add_argument("--batch", type=_int_list(1), metavar="B,...",
                       help=f"prompts per batch [{_csv(d['batches'])}]")
    sweep.add_argument("--points", type=_int_list(0), metavar="N,...",
                       help=f"points per prompt [{_csv(d['points'])}]")
    sweep.add_argument("--boxes", type=_int_list(0), metavar="K,...",
                       help=f"boxes per prompt; K > 1 is ours only [{_csv(d['boxes'])}]")
    sweep.add_argument("--masks", action="store_true",
                       help="also cases with a mask prompt (slow on CPU: ~0.3-3 s a call at B=64)")
    sweep.add_argument("--embed-dim", type=_int_list(2), metavar="C,...",
                       help=f"embedding widths [{_csv(d['embed_dims'])}]")
    sweep.add_argument("--dtype", type=_choice_list(DTYPES), default=("float32",), metavar="DTYPE,...",
                       help=f"our module's (output) dtypes, from {_csv(DTYPES)}; Meta's module stays "
                            "fp32 [float32]")
    what = run.add_argument_group("what to run")
    what.add_argument("--device", type=_device, metavar="cpu|cuda[:N]",
                      help="cpu, cuda or cuda:N [cuda if torch sees a GPU, else cpu]")
    what.add_argument("--backends", type=_choice_list(BACKENDS + ECOSYSTEM_BACKENDS),
                      metavar="NAME,...",
                      help=f"from {_csv(BACKENDS)}; and where transformers / ultralytics are "
                           f"installed, their encoders and our drop-ins for them, each compared "
                           f"with its own: {_csv(ECOSYSTEM_BACKENDS)} [{_csv(DEFAULT_BACKENDS)}; with --foundation "
                           f"{_csv(FOUNDATION_BACKENDS)}]. A backend named here that cannot run on "
                           "the device is an error (exit 2); a default one is noted and left out")
    what.add_argument("--cases", metavar="TEXT,...",
                      help="keep only the cases whose name contains one of these strings")
    what.add_argument("--check-targets", action="store_true",
                      help="print PASS/FAIL for the targets of the cases that have them (our "
                           "PyTorch path on CPU: click, amg-16384x4, b64-n0-mask) after the "
                           "table; exit 1 unless all pass")
    what.add_argument("--compile-mode", default=COMPILE_MODE, metavar="MODE",
                      help=f"torch.compile mode of the *-compiled backends [{COMPILE_MODE}, as "
                           "SAM-2's VOS predictor]")
    timing = run.add_argument_group("timing")
    timing.add_argument("--threads", type=_int_at_least(1), default=1, metavar="N",
                        help="CPU: torch threads during the run [1, as torch.utils.benchmark]")
    timing.add_argument("--min-run-time", type=_positive_float, default=0.2, metavar="SECONDS",
                        help="CPU: least seconds spent timing each row [0.2]")
    timing.add_argument("--min-samples", type=_int_at_least(1), default=5, metavar="N",
                        help="CPU: least number of timed blocks per row [5]")
    timing.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    out = run.add_argument_group("output files")
    out.add_argument("--json", metavar="FILE", help="write {machine, settings, results} here")
    out.add_argument("--csv", metavar="FILE", help="write one line per row here")
    out.add_argument("--plot", metavar="PNG",
                     help="draw each case's speedup over upstream here (needs matplotlib: the "
                          "'plot' extra)")


def _add_sass(sub) -> None:
    sass = sub.add_parser(
        "sass", help="compile every Triton kernel variant ahead of time: static SASS report",
        description="Compile every kernel variant the launchers can launch, for each architecture, "
                    "and report registers, spills, instructions and stores from the cubins (no GPU "
                    "needed; needs Triton).")
    sass.add_argument("--arch", type=_archs, default=SASS_ARCHS, metavar="SM,...",
                      help="CUDA architectures to compile for, e.g. sm_80,sm_86,sm_89,sm_90,sm_100,"
                           f"sm_120 [{_csv(SASS_ARCHS)}]")
    sass.add_argument("--json", metavar="FILE", help='write {"machine", "kernels": [rows]} here')
    sass.add_argument("--dump-dir", metavar="DIR", help="keep each variant's .cubin, .ptx and .sass here")


def _add_model(sub) -> None:
    model = sub.add_parser(
        "model", help="a MODEL (not a measurement): bytes, launches and a roofline per backend",
        description="Count the aten ops (as kernel launches) and bytes of one eager call per "
                    "backend on CPU tensors, and predict a GPU's time as max(bytes / bandwidth, "
                    "launches x launch cost). A model, labelled as one.")
    model.add_argument("--gpu", choices=sorted(GPUS), default="H100",
                       help="whose spec-sheet bandwidth to use (sam2_prompt/kernels/gpus.py): "
                            + "; ".join(f"{name} {gpu.bytes_per_s / 1e12:g} TB/s"
                                        for name, gpu in sorted(GPUS.items())) + " [H100]")
    model.add_argument("--bandwidth-tbs", type=_positive_float, metavar="TB/S",
                       help="use this DRAM bandwidth instead of the GPU's")
    model.add_argument("--launch-us", type=_positive_float, default=LAUNCH_US, metavar="US",
                       help=f"cost of one kernel launch in microseconds [{LAUNCH_US:g}]")
    model.add_argument("--batch", type=_int_at_least(1), default=16384, metavar="B",
                       help="prompts per batch [16384]")
    model.add_argument("--points", type=_int_at_least(0), default=4, metavar="N",
                       help="points per prompt [4]")
    model.add_argument("--boxes", type=_int_at_least(0), default=0, metavar="K", help="boxes per prompt [0]")
    model.add_argument("--masks", action="store_true",
                       help="each prompt also has a mask ([B, 1, 256, 256]; its dense output is "
                            "[B, C, 64, 64]): the mask path's launches and bytes")
    model.add_argument("--embed-dim", type=_int_at_least(2), default=256, metavar="C",
                       help="embedding width [256]")
    model.add_argument("--json", metavar="FILE", help="write the model, the case and its rows here")


def _add_host(sub) -> None:
    host = sub.add_parser(
        "host", help="host time per eager forward: the Triton path as a CUDA call takes it, "
                     "without a GPU, against the PyTorch path and Meta's module",
        description="Thread CPU time per eager forward (no_grad, one thread, best of alternating "
                    "rounds) for a click, 64 x 1 and 1024 x 4 prompts: the Triton path on CPU "
                    "tensors exactly as a CUDA call takes it, kernels compiled for --arch and a "
                    "no-op final launch (a fake CUDA driver); our PyTorch path and Meta's eager "
                    "module, compute included. Needs Triton, not a GPU.")
    host.add_argument("--arch", type=_arch, default="sm_90", metavar="SM",
                      help="the architecture the kernels compile for [sm_90]")
    host.add_argument("--rounds", type=_int_at_least(1), default=15, metavar="N",
                      help="alternating rounds; each backend's best round counts [15]")
    host.add_argument("--json", metavar="FILE",
                      help='write {"machine", "settings", "results": rows of case, backend, '
                           'host_us, ...} here')
    host.add_argument("--check-targets", action="store_true",
                      help="print PASS/FAIL for the click targets (triton <= 0.3x torch and "
                           "<= 0.12x upstream); exit 1 unless both pass")


# ----------------------------------------------------------------------------- main
def command(name: str):
    """The function that runs a command (imports its module, and with it torch, only now)."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # the main job: the quick benchmark on the best device
        argv = ["run", "--quick"]
    p = parser()
    args = p.parse_args(argv)
    if args.command is None:
        p.print_help()
        return 2
    args.argv = argv
    try:
        return command(args.command)(args)
    except UsageError as err:
        print(f"sam2-prompt-bench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
