"""Benchmarks of ldm against Hugging Face diffusers (``python -m bench.run``); not part of the installed package."""
