"""Why the Janus guard can or cannot remove a second face, on the micro Stable Diffusion: one prior call per row.

For a camera behind the ball (180°) and one at its side (90°) it renders the micro world's true object for the
caption (``--caption``, a featured ball; albedo on white), encodes that view and the same with the face turned
to the camera (the 0° view at that framing) with the model's VAE, noises them at several t (``--draws`` noise
samples each) and asks the model for ε(z_t; y), ε(z_t; ∅) and ε(z_t; view negative), the rows the guard
evaluates. Per t it prints

* ``|δ_C|`` and cos(δ_C, δ_v), δ_v = ε_view_negative − ε_∅: Perp-Neg removes only the part of δ_v
  perpendicular to δ_C, so where the cosine is near 1 there is nothing for it to remove;
* the *face pull* of a direction g: −⟨g, u⟩ with u the unit latent step from the true view to the face turned
  to the camera (positive: a step along g paints the face where this camera looks);
* that pull for δ_C (no guard); for Perp-Neg's δ_C − w·(δ_v)⊥δ_C at threestudio's ``perp_neg_f_fsb`` weight
  (1.97 behind, 1.57 at the side), which the guard was first built as; for the unbounded view contrast
  δ_C + c·(ε_y − ε_view_negative) (``--contrast``); and for the guard as it is, that contrast at the gain for
  the camera's azimuth, bounded by ‖δ_C‖ (``score.view_contrast_delta``).

    .venv/bin/python benchmarks/janus_guard_probe.py [--draws 8] [--contrast 0.25]

Last line: ``cos_high_t=<mean cos(δ_C, δ_v) behind, t ≥ 700> pull_high_t=<δ_C's face pull there>
perp_neg_pull_high_t=<Perp-Neg's> guard_pull_high_t=<the guard's> perp_neg_pull_low_t=<Perp-Neg's, t ≤ 300>
guard_pull_low_t=<the guard's>`` (all from the true back view).
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch

from nfsd_contract.constants import NFSD_NEGATIVE_PROMPT
from nfsd_lab.micro.judge import BANK_DISTANCES, BANK_FOV
from nfsd_lab.micro.world import Truth, caption_truths, render_truth
from nfsd_server.guidance.distillation import view_negative_cameras
from nfsd_server.guidance.prior import Conditions, Prior, PromptKind
from nfsd_server.guidance.registry import load_prior
from nfsd_server.guidance.score import view_contrast_delta, view_contrast_weight
from nfsd_server.scene.cameras import Cameras, make_cameras

TIMESTEPS = (100, 300, 500, 700, 900)
HIGH_T, LOW_T = 700, 300
# threestudio's perp_neg_f_fsb, a·exp(−b·r) + c with r = 0 straight behind and 1 at the side
PERP_NEG_FSB = (1.0, 0.5, 0.967)


def perp_neg_weight(azimuth_deg: float) -> float:
    a, b, c = PERP_NEG_FSB
    return a * math.exp(-b * (180.0 - abs(azimuth_deg)) / 90.0) + c


def perp_neg(delta_cond, delta_view, weight: float):
    """δ_C − w·(δ_v − (⟨δ_v, δ_C⟩/‖δ_C‖²)·δ_C): Perp-Neg (Armandpour et al. 2023) for one negative."""
    norm2 = float((delta_cond * delta_cond).sum())
    along = float((delta_view * delta_cond).sum()) / norm2 if norm2 > 0 else 0.0
    return delta_cond - weight * (delta_view - along * delta_cond)


def probe(prior: Prior, prompts, truth: Truth, azimuth_deg: float, face_share: float, t: int, draws: int,
          contrast: float, generator: torch.Generator) -> dict[str, float]:
    """Mean over ``draws`` noise samples of the cosine and the face pulls, for a render that is the true view
    blended ``face_share`` of the way to the face turned to the camera."""
    framing = torch.tensor([BANK_DISTANCES[1]]), torch.tensor([BANK_FOV])  # the world's middle distance and FOV
    cameras = make_cameras(torch.tensor([15.0]), torch.tensor([azimuth_deg]), *framing)
    facing = make_cameras(torch.tensor([15.0]), torch.tensor([0.0]), *framing)
    images = torch.cat([render_truth(truth, c, prior.image_size)[0] for c in (cameras, facing)])
    true_view, face = prior.encode(images.to(prior.device)).float().cpu()
    toward_face = (face - true_view).flatten()
    toward_face = toward_face / toward_face.norm()
    clean = (1 - face_share) * true_view + face_share * face
    rows = Cameras.cat([cameras, cameras, view_negative_cameras(cameras)])
    kinds = torch.tensor([PromptKind.PROMPT, PromptKind.NULL, PromptKind.PROMPT])
    weight = view_contrast_weight(cameras.azimuth)
    alpha_bar = prior.alphas_cumprod[t]
    samples = []
    for _ in range(draws):
        noisy = alpha_bar.sqrt() * clean + (1 - alpha_bar).sqrt() * torch.randn(clean.shape, generator=generator)
        eps = prior.predict_noise(noisy[None].expand(3, -1, -1, -1).to(prior.device), torch.full((3,), t, device=prior.device),
                                  Conditions(kinds, rows, prompts)).cpu()
        cond, uncond, view = eps[0:1], eps[1:2], eps[2:3]
        delta_cond, delta_view = cond - uncond, view - uncond
        pull = lambda direction: float(-(direction.flatten() @ toward_face))  # noqa: E731
        samples.append({
            "norm": float(delta_cond.norm()),
            "cos": float(torch.nn.functional.cosine_similarity(delta_cond.flatten(), delta_view.flatten(), dim=0)),
            "pull": pull(delta_cond),
            "perp_neg": pull(perp_neg(delta_cond, delta_view, perp_neg_weight(azimuth_deg))),
            "contrast": pull(delta_cond + contrast * (cond - view)),
            "guard": pull(view_contrast_delta(cond, uncond, view, weight)),
        })
    return {key: statistics.mean(s[key] for s in samples) for key in samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=8, help="noise samples per t (default 8)")
    parser.add_argument("--contrast", type=float, default=0.25, help="the view contrast's weight c (default 0.25)")
    featured = {caption: truth for caption, truth in caption_truths() if truth.shape == "ball" and truth.feature_color}
    parser.add_argument("--caption", default="a blue ball with a yellow face", choices=sorted(featured))
    args = parser.parse_args()
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    torch.set_grad_enabled(False)
    prior = load_prior("stable-diffusion", "micro", "cpu")
    prompts = prior.prepare_prompts(args.caption, NFSD_NEGATIVE_PROMPT)
    generator = torch.Generator().manual_seed(0)
    gains = [float(view_contrast_weight(torch.deg2rad(torch.tensor([a])))) for a in (180.0, 90.0)]
    print(f"micro model, {args.caption!r}, {args.draws} noise draws per row; Perp-Neg weight 180°: "
          f"{perp_neg_weight(180.0):.2f}, 90°: {perp_neg_weight(90.0):.2f}; unbounded contrast c = {args.contrast}; "
          f"the guard's gain 180°: {gains[0]:g}, 90°: {gains[1]:g}")
    header = (f"{'camera':>6} {'render':<12} {'t':>4} {'|δ_C|':>7} {'cos(δ_C,δ_v)':>12}   face pull: {'δ_C':>7} "
              f"{'Perp-Neg':>8} {'contrast':>8} {'guard':>7}")
    print(header)
    print("-" * len(header))
    high_t: list[dict[str, float]] = []
    low_t: list[dict[str, float]] = []
    for azimuth in (180.0, 90.0):
        for face_share, render in ((0.0, "true view"), (0.2, "+20% face")):
            for t in TIMESTEPS:
                r = probe(prior, prompts, featured[args.caption], azimuth, face_share, t, args.draws, args.contrast,
                          generator)
                if azimuth == 180.0 and face_share == 0.0:
                    (high_t if t >= HIGH_T else low_t if t <= LOW_T else []).append(r)
                print(f"{azimuth:5.0f}° {render:<12} {t:>4} {r['norm']:7.3f} {r['cos']:12.3f}   {'':>10} {r['pull']:+7.3f} "
                      f"{r['perp_neg']:+8.3f} {r['contrast']:+8.3f} {r['guard']:+7.3f}")
    mean = lambda rows, key: statistics.mean(r[key] for r in rows)  # noqa: E731
    print(f"cos_high_t={mean(high_t, 'cos'):.3f} pull_high_t={mean(high_t, 'pull'):+.3f} "
          f"perp_neg_pull_high_t={mean(high_t, 'perp_neg'):+.3f} guard_pull_high_t={mean(high_t, 'guard'):+.3f} "
          f"perp_neg_pull_low_t={mean(low_t, 'perp_neg'):+.3f} guard_pull_low_t={mean(low_t, 'guard'):+.3f}")


if __name__ == "__main__":
    main()
