"""Makes original_samples.pt: DPM_Solver.sample of the ORIGINAL module (CompVis stable-diffusion 21f890f,
ldm/models/diffusion/dpm_solver/dpm_solver.py, loaded from a checkout given as argv[1]) on a fixed analytic ε model.

    python tests/refdata/dpm_solver_api/make_reference.py /path/to/CompVis/stable-diffusion
"""

import importlib.util
import sys
from pathlib import Path

import torch

torch.set_default_dtype(torch.float64)
spec = importlib.util.spec_from_file_location(
    "original_dpm_solver", Path(sys.argv[1]) / "ldm/models/diffusion/dpm_solver/dpm_solver.py")
original = importlib.util.module_from_spec(spec)
spec.loader.exec_module(original)

betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))


def eps_model(x, t):
    return 0.3 * x + 0.1 * torch.sin(t.reshape(-1, 1, 1, 1) / 100.0)


CASES = {
    "multistep3": dict(order=3, method="multistep"),
    "multistep2": dict(order=2, method="multistep"),
    "multistep2_taylor": dict(order=2, method="multistep", solver_type="taylor"),
}  # the original's singlestep plans crash on torch >= 2 (torch.cumsum without dim), so only multistep is stored
out = {"x_T": x_T}
for predict_x0 in (False, True):
    for name, options in CASES.items():
        ns = original.NoiseScheduleVP("discrete", betas=betas)
        solver = original.DPM_Solver(original.model_wrapper(eps_model, ns, model_type="noise"), ns,
                                     predict_x0=predict_x0)
        out[f"{name}_x0={predict_x0}"] = solver.sample(x_T.clone(), steps=20, skip_type="time_uniform", **options)
torch.save(out, Path(__file__).parent / "original_samples.pt")
