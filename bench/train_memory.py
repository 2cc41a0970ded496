"""Peak resident memory of one training step (forward + backward) of a Stable Diffusion UNet on the CPU.

    MALLOC_MMAP_THRESHOLD_=65536 OMP_NUM_THREADS=2 python -m bench.train_memory --version v1 --latent 64 \
        --batch 1 --checkpointing on --precision fp32

One configuration per process. Large tensors are mmapped (the fixed mmap threshold) and so returned to the
system when freed: the resident set follows the live tensors. /proc/self/clear_refs (5) resets the peak (VmHWM).
Prints: parameters; resident set after building; the peak of step 1 (which also allocates the gradients) and of
step 2 (gradients already allocated) above the resident set at its start, in MiB.
"""

from __future__ import annotations

import argparse
import re
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

CONFIGS = {"v1": ("configs/stable-diffusion/v1-inference.yaml", 768),
           "v2": ("configs/stable-diffusion/v2-inference-v.yaml", 1024)}


def mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) / 1024


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", choices=CONFIGS, default="v1")
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--checkpointing", choices=("on", "off"), default="on")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    opt = parser.parse_args()
    path, context_dim = CONFIGS[opt.version]
    unet_config = OmegaConf.load(path).model.params.unet_config
    on = opt.checkpointing == "on"
    unet_config.params.use_checkpoint = on
    unet_config.params.checkpoint_transformers = on
    torch.manual_seed(0)
    unet = instantiate_from_config(unet_config).train()
    params = sum(p.numel() for p in unet.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(opt.batch, 4, opt.latent, opt.latent, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    t = torch.randint(0, 1000, (opt.batch,), generator=gen)
    context = torch.randn(opt.batch, 77, context_dim, generator=gen)
    print(f"{opt}: parameters {params}, gradients {params * 4 / 2**20:.0f} MiB", flush=True)
    for step in (1, 2):
        start = mib("VmRSS")
        reset_peak()
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=opt.precision == "bf16"):
            out = unet(x, t, context)
            loss = F.mse_loss(out.float(), noise)
        loss.backward()
        seconds = time.perf_counter() - began
        peak = mib("VmHWM")
        del out, loss
        for p in unet.parameters():
            p.grad.zero_()
        print(f"step {step}: start {start:.0f} MiB, peak {peak:.0f} MiB, peak above start {peak - start:.0f} MiB, "
              f"{seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
