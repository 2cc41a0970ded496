"""Placeholder: filled in by the k-sampler work of issue 17."""

__all__: list[str] = []
