"""Triton kernels of the prompt encoder (installed as ``sam2_prompt.kernels``).

sincos: turns-domain sin/cos helpers; sparse: the sparse forward / backward kernels and launchers;
dense: the dense positional grid; aot: ahead-of-time compilation and the static SASS report.
Importing this package needs nothing; the submodules import triton. Nothing here imports nn.Module
code.
"""
