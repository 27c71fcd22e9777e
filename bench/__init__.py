"""Benchmarks and the sam2-prompt-bench CLI (installed as sam2_prompt.bench)."""
