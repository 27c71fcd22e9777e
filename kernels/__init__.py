"""Triton kernels (installed as sam2_prompt.kernels). Imports nothing from nn.Module code."""
