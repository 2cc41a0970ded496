"""Measurements of trained models by code that is not the model (reconstruction quality, prompt adherence)."""
