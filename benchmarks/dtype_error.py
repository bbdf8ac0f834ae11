"""How far each ``--dtype`` moves the distillation signal from fp32, on the same random weights (CPU is fine).

    .venv/bin/python benchmarks/dtype_error.py                       # tiny random SD, a few seconds
    .venv/bin/python benchmarks/dtype_error.py --model random:sd21-base --batches 2   # real sizes (minutes, ~10 GB)

For every dtype the dtype policy resolves (fp16, bf16 UNet; text encoder and VAE stay fp32), the same
noisy latents, timesteps and prompts go through the prior, and we print the relative L2 error against fp32 of
  * δ_C = ε(z_t; y) − ε(z_t; ∅)   (NFSD's conditional term: a small difference of two large predictions),
  * the NFSD direction δ_D + s·δ_C,
  * the gradient that reaches the rendered image through the VAE encoder (what trains the NeRF),
and whether everything stayed finite.

    .venv/bin/python benchmarks/dtype_error.py --taesd [--model DIR] [--device cuda]   # TAESD in fp16 vs fp32

``--taesd`` instead measures the RGB phase's TAESD encoder in fp16 against fp32 (UNet fp32 in both): the relative
L2 error of the latents and of the image gradient through the encoder's backward, and the NFSD direction, with
last lines ``taesd_fp16_latent_error=`` and ``taesd_fp16_grad_error=``. Random weights (the default) only show the
path runs; the policy (``dtype_policy.ComponentDtypes.taesd``) should follow the real weights on CUDA.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from nfsd_server.guidance.distillation import predict_rows
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.random_models import save_random_stable_diffusion
from nfsd_server.guidance.score import distillation_loss, needs_negative, nfsd_direction, timestep_weight
from nfsd_server.scene.cameras import sample_orbit_cameras


def signals(prior, images: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cameras, guidance_scale: float):
    """(δ_C, NFSD direction, d loss / d images) for one batch, all float32 on the CPU."""
    prompts = prior.prepare_prompts("a red ball on a table", "ugly, blurry")
    images = images.clone().requires_grad_(True)
    latents = prior.encode(images)
    alphas = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    with torch.no_grad():
        latents_noisy = alphas.sqrt() * latents + (1 - alphas).sqrt() * noise
        eps = predict_rows(prior, latents_noisy, t, cameras, prompts, needs_negative(t))
        direction = nfsd_direction(eps.cond, eps.uncond, eps.negative, t, guidance_scale)
    distillation_loss(latents, timestep_weight(prior.alphas_cumprod, t) * direction).backward()
    return (eps.cond - eps.uncond).cpu(), direction.cpu(), images.grad.cpu()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def measure(model: str, batches: int, batch_size: int, device: str = "cpu") -> dict[str, tuple[float, float, float, bool]]:
    """dtype name → (δ_C error, direction error, image-gradient error, all finite), errors pooled over batches."""
    generator = torch.Generator().manual_seed(0)
    priors = {name: load_prior("stable-diffusion", model, device, dtype=name) for name in ("fp32", "fp16", "bf16")}
    side = priors["fp32"].image_size
    results: dict[str, list[tuple[torch.Tensor, ...]]] = {name: [] for name in priors}
    for _ in range(batches):
        images = torch.rand(batch_size, 3, side, side, generator=generator)
        t = torch.randint(20, 980, (batch_size,), generator=generator)
        latent_side = side // priors["fp32"].vae_scale_factor
        noise = torch.randn(batch_size, 4, latent_side, latent_side, generator=generator)
        cameras = sample_orbit_cameras(batch_size, generator)
        for name, prior in priors.items():
            results[name].append(signals(prior, images, t, noise, cameras, 7.5))
    pooled = {name: [torch.cat([r[i].flatten() for r in rows]) for i in range(3)] for name, rows in results.items()}
    return {
        name: (
            *(relative_error(pooled[name][i], pooled["fp32"][i]) for i in range(3)),
            all(bool(torch.isfinite(x).all()) for x in pooled[name]),
        )
        for name in ("fp16", "bf16")
    }


def taesd_errors(model: str, batches: int, batch_size: int, device: str) -> tuple[float, float, float, bool]:
    """(latent error, image-gradient error, direction error, all finite) of TAESD fp16 against fp32."""
    import dataclasses

    generator = torch.Generator().manual_seed(0)
    reference = load_prior("stable-diffusion", model, device, dtype="fp32", encoder="taesd")
    half = load_prior("stable-diffusion", model, device, dtype="fp32", encoder="taesd")
    half.taesd.to(dtype=torch.float16)
    half.dtypes = dataclasses.replace(half.dtypes, taesd=torch.float16)
    side, pooled = reference.image_size, {"fp32": [], "fp16": []}
    for _ in range(batches):
        images = torch.rand(batch_size, 3, side, side, generator=generator)
        t = torch.randint(20, 980, (batch_size,), generator=generator)
        latent_side = side // reference.vae_scale_factor
        noise = torch.randn(batch_size, 4, latent_side, latent_side, generator=generator)
        cameras = sample_orbit_cameras(batch_size, generator)
        for name, prior in (("fp32", reference), ("fp16", half)):
            with torch.no_grad():
                latents = prior.encode(images.to(device)).cpu()
            _, direction, grad = signals(prior, images.to(device), t.to(device), noise.to(device), cameras.to(device), 7.5)
            pooled[name].append((latents, grad, direction))
    flat = {name: [torch.cat([r[i].flatten() for r in rows]) for i in range(3)] for name, rows in pooled.items()}
    errors = [relative_error(flat["fp16"][i], flat["fp32"][i]) for i in range(3)]
    return (*errors, all(bool(torch.isfinite(x).all()) for x in flat["fp16"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="diffusers folder or random:<name> (default: the tiny random SD)")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--taesd", action="store_true", help="TAESD fp16 vs fp32 instead of the UNet's dtypes")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model or str(save_random_stable_diffusion(Path(scratch) / "tiny", "tiny"))
        if args.taesd:
            latent, grad, direction, finite = taesd_errors(model, args.batches, args.batch_size, args.device)
            print(f"TAESD fp16 vs fp32 ({args.model or 'tiny random SD'}; {args.batches}×{args.batch_size} rows, "
                  f"{args.device}): direction {direction:.2e}, finite {finite}")
            print(f"taesd_fp16_latent_error={latent:.2e}")
            print(f"taesd_fp16_grad_error={grad:.2e}")
            return
        table = measure(model, args.batches, args.batch_size)
    print(f"relative L2 error vs fp32 ({args.model or 'tiny random SD'}; {args.batches}×{args.batch_size} rows, CPU)")
    print(f"{'UNet dtype':<11}{'δ_C':>10}{'direction':>12}{'image grad':>12}  finite")
    for name, (delta_c, direction, grad, finite) in table.items():
        print(f"{name:<11}{delta_c:>10.2e}{direction:>12.2e}{grad:>12.2e}  {finite}")


if __name__ == "__main__":
    main()
