"""Triton kernels of the prompt encoder (installed as ``sam2_prompt.kernels``).

sincos: turns-domain sin/cos helpers; sparse: the sparse forward / backward kernels and launchers;
dense: the dense positional grid; mask: the mask prompt's layers in one kernel; aot:
ahead-of-time compilation and the static SASS report; gpus: the GPU spec figures of every report
(imports neither torch nor triton); lean_launch: launching cached binaries directly (eager calls);
fake_driver: a fake CUDA driver, for host-time measurements and tests without a GPU.
Importing this package needs nothing; the submodules import triton. Nothing here imports nn.Module
code.
"""
