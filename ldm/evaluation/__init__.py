"""Measurements of trained models by code that is not the model (reconstruction quality, prompt adherence).

Generator metrics (one module each, importing nothing heavy here): ``frechet`` (FID), ``kid``, ``inception_score``,
``precision_recall``, ``clip_score``; the feature extractors in ``features`` (Inception-v3, pluggable), image
sources and extraction loops (one process or a Lightning predict loop over N devices) in ``extract``, ADM-layout
``.npz`` statistics in ``reference_stats``, on-the-fly sampling in ``generated``, and the metric set of one run in
``generator_metrics`` (used by ``scripts/evaluate.py``; see docs/evaluation.md).

Autoencoder metrics (PSNR, SSIM, LPIPS, rFID, latent statistics / scale_factor) in ``reconstruction`` with the
command ``autoencoder_cli``; the shapes feature space (an FID-like distance for the bundled shapes data, not
Inception FID) in ``shapes_features``; the demo's figures in ``demo_metrics`` (see docs/evaluation_autoencoder.md).
"""
