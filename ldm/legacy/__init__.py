"""Code kept only so that the original import paths keep working; re-exported from those paths."""
