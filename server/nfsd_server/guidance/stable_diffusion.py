"""Stable Diffusion as a prior: diffusers UNet + VAE + CLIP text encoder, loaded with ``from_pretrained``.

``model`` is a Hugging Face hub id (resolved from the local cache when offline) or a local folder laid out
like a diffusers pipeline (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from nfsd_contract import DEFAULT_MODEL, ENCODERS
from nfsd_server.guidance.dtype_policy import ComponentDtypes, resolve_dtypes, text_encoder_device
from nfsd_server.guidance.prior import Conditions, Prior, PromptKind
from nfsd_server.guidance.registry import register_prior
from nfsd_server.model_source import resolve_bundled
from nfsd_server.scene.cameras import VIEW_SUFFIXES

log = logging.getLogger(__name__)

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
# TAESD for SD 1.x/2.x latents (diffusers AutoencoderTiny). A model folder may carry its own as taesd/.
TAESD_MODEL = "madebyollin/taesd"
TAESD_SUBFOLDER = "taesd"
# A model trained on a closed set of words may list them here ({"words": [...]}); prompts are then checked.
VOCABULARY_FILE = "vocabulary.json"
PREDICTION_TYPES = ("epsilon", "v_prediction")


class ModelLoadError(ValueError):
    """The model could not be loaded; the message says which model, what is wrong and how to fix it."""


@dataclass(frozen=True)
class Vocabulary:
    """A closed-vocabulary model's words, and its author's line on what prompts it takes ('' → list the words)."""

    words: frozenset[str]
    summary: str = ""


@dataclass
class PromptEmbeddings:
    """CLIP embeddings, computed once per job: prompt with each view suffix (V, L, D), ∅ (1, L, D), negative (1, L, D)."""

    prompt_views: Tensor
    null: Tensor
    negative: Tensor


class StableDiffusionPrior(Prior):
    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, device: torch.device, dtypes: ComponentDtypes,
                 encode_size: int | None = None, taesd=None, vocabulary: Vocabulary | None = None):
        self.device, self.dtypes = device, dtypes
        self.vocabulary = vocabulary
        self.text_device = text_encoder_device(device)
        placements = ((unet, dtypes.unet, device), (vae, dtypes.vae, device),
                      (text_encoder, dtypes.text_encoder, self.text_device))
        for module, dtype, module_device in placements:
            module.requires_grad_(False).eval().to(module_device)
            if module.dtype != dtype:  # from_pretrained already loaded in ``dtype``; random models did not
                module.to(dtype=dtype)
        # The RGB phase's encoder: TAESD when given (fp32 like the VAE: its backward runs every step), else the VAE.
        if taesd is not None:
            taesd.requires_grad_(False).eval().to(device)
            if taesd.dtype != dtypes.taesd:  # (casting when it already matches makes diffusers warn)
                taesd.to(dtype=dtypes.taesd)
        self.taesd = taesd
        self.encoder_name = "taesd" if taesd is not None else "vae"
        if device.type == "cuda":  # faster convolutions for the tensor cores, on the UNet and the VAE encoder
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.scheduler_config = dict(scheduler.config)  # the noise schedule, for samplers built beside the prior
        # SD 2.x 768 and many fine-tunes predict v, not ε; the distillation maths needs ε (see predict_noise).
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelLoadError(
                f"the model's scheduler has prediction_type={self.prediction_type!r}; only "
                f"{' and '.join(map(repr, PREDICTION_TYPES))} models can guide a NeRF: pick another checkpoint"
            )
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels
        self.latent_scale = self.vae_scale_factor
        self.image_size = unet.config.sample_size * self.vae_scale_factor
        self.scaling_factor = vae.config.scaling_factor
        # Opt-in speed/quality trade (benchmarks, experiments): encode at encode_size instead of image_size and
        # upsample the latents. The VAE encode + its backward costs more than the UNet at 512²; 256 quarters it.
        if encode_size is not None and not (
            self.vae_scale_factor <= encode_size <= self.image_size and encode_size % self.vae_scale_factor == 0
        ):
            raise ValueError(
                f"encode_size must be a multiple of {self.vae_scale_factor} in [{self.vae_scale_factor}, "
                f"{self.image_size}], got {encode_size}; leave it unset to encode at the model's {self.image_size} px"
            )
        self.encode_size = encode_size or self.image_size
        self._unet_compiled, self._dynamic_rows = False, False
        self._compiled_rows: set[int] = set()  # row counts the compiled UNet has run (has a graph for)

    @property
    def unet_dtype(self) -> torch.dtype:
        return self.dtypes.unet

    @classmethod
    def from_pretrained(
        cls, model: str, device: torch.device, dtypes: ComponentDtypes, encode_size: int | None = None,
        encoder: str = "vae",
    ) -> "StableDiffusionPrior":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        _check_local_folder(model)
        # use_safetensors: pickled weights (.bin) can run code when loaded; never fall back to them.
        loaders = {
            "unet": lambda: load_unet(model, dtypes.unet),
            "vae": lambda: AutoencoderKL.from_pretrained(
                model, subfolder="vae", torch_dtype=dtypes.vae, use_safetensors=True
            ),
            "text_encoder": lambda: CLIPTextModel.from_pretrained(
                model, subfolder="text_encoder", torch_dtype=dtypes.text_encoder, use_safetensors=True
            ),
            "tokenizer": lambda: CLIPTokenizer.from_pretrained(model, subfolder="tokenizer"),
            "scheduler": lambda: DDPMScheduler.from_pretrained(model, subfolder="scheduler"),
        }
        components = {}
        for name, load in loaders.items():
            try:
                components[name] = load()
            except (OSError, ValueError, json.JSONDecodeError) as error:
                raise ModelLoadError(_explain_load_failure(model, name, error)) from error
        taesd = load_taesd(model, dtypes) if encoder == "taesd" else None
        log.info("loaded Stable Diffusion %r on %s (%s), RGB encoder %s", model, device, dtypes, encoder)
        return cls(**components, device=device, dtypes=dtypes, encode_size=encode_size, taesd=taesd,
                   vocabulary=read_vocabulary(model))

    def compile(self, dynamic_rows: bool = False, backend: str | Callable = "inductor") -> None:
        """torch.compile the UNet in place (nn.Module.compile), so every job sharing this warm prior gets it once.

        Without recompiles inside a job: torch.compile's default would compile a second, dynamic graph the first
        time a step asks for other rows (NFSD: 3 rows at t ≥ 200, 2 below). ``dynamic_rows`` compiles one graph
        with the row count symbolic; else (dynamic=False) each row count gets its own static graph, compiled by
        ``warm_compiled`` before the job's steps. ``backend``: torch.compile's (tests count graphs with their own).
        """
        if not self._unet_compiled:
            self.unet.compile(dynamic=None if dynamic_rows else False, backend=backend)
            self._unet_compiled, self._dynamic_rows = True, dynamic_rows

    def rows_to_compile(self, row_counts: Iterable[int]) -> list[int]:
        if not self._unet_compiled:
            return []
        if self._dynamic_rows:  # one graph serves every count once any has run
            return sorted(set(row_counts))[:1] if not self._compiled_rows else []
        return sorted(set(row_counts) - self._compiled_rows)

    def warm_compiled(self, row_counts: Iterable[int], prompts: PromptEmbeddings) -> None:
        side = self.image_size // self.vae_scale_factor
        for rows in self.rows_to_compile(row_counts):
            latents = torch.zeros(rows, self.latent_channels, side, side, device=self.device)
            t = torch.full((rows,), self.num_train_timesteps // 2, dtype=torch.long, device=self.device)
            with torch.no_grad():
                self._denoise(latents, t, prompts.null.expand(rows, -1, -1).contiguous())
        self._compiled_rows.update(row_counts)

    def _embed(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer(
            texts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            # Encoded in fp32 once per job, stored in the UNet's dtype for every step's call.
            embeddings = self.text_encoder(tokens.input_ids.to(self.text_device))[0]
            return embeddings.to(device=self.device, dtype=self.dtypes.unet)

    def _check_fits(self, texts: list[str]) -> None:
        """The encoder truncates at model_max_length tokens: a long prompt would lose its view suffix silently."""
        limit = self.tokenizer.model_max_length
        counts = [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False).input_ids]
        longest = max(range(len(texts)), key=counts.__getitem__)
        if counts[longest] > limit:
            suffix = texts[longest].rsplit(", ", 1)[1]
            raise ValueError(
                f"the prompt is {counts[longest]} tokens with its view suffix ({suffix!r}); the text encoder reads "
                f"{limit}, so the view suffix would be cut off: shorten the prompt by {counts[longest] - limit} tokens"
            )

    def _check_vocabulary(self, text: str, what: str) -> None:
        if self.vocabulary is None:
            return
        words = self.vocabulary.words
        unknown = [word for word in dict.fromkeys(re.findall(r"[a-z]+", text.lower())) if word not in words]
        if unknown:
            known = self.vocabulary.summary or ", ".join(sorted(word for word in words if word.isalpha()))
            raise ValueError(
                f"this model was trained on a closed vocabulary and does not know {', '.join(map(repr, unknown))} in "
                f"the {what}; it knows: {known}"
            )

    def prepare_prompts(self, prompt: str, negative_prompt: str) -> PromptEmbeddings:
        if not prompt.strip():
            raise ValueError("prompt is empty; describe the object to generate, e.g. 'a hamburger'")
        self._check_vocabulary(prompt, "prompt")
        self._check_vocabulary(negative_prompt, "negative prompt")
        texts = [f"{prompt}, {suffix}" for suffix in VIEW_SUFFIXES]
        self._check_fits(texts)
        views = self._embed(texts)
        null, negative = self._embed(["", negative_prompt]).split(1)
        return PromptEmbeddings(prompt_views=views, null=null, negative=negative)

    def encode(self, images: Tensor) -> Tensor:
        images = F.interpolate(images, size=(self.encode_size, self.encode_size), mode="bilinear", align_corners=False)
        latents = self._encode_pixels(images)
        if self.encode_size != self.image_size:
            side = self.image_size // self.vae_scale_factor
            latents = F.interpolate(latents, size=(side, side), mode="bilinear", align_corners=False)
        return latents

    def _encode_pixels(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] → (B, C, H/8, W/8) scaled latents, with the RGB phase's encoder."""
        images = (images * 2.0 - 1.0).to(self.dtypes.vae if self.taesd is None else self.dtypes.taesd)
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        if self.taesd is not None:  # TAESD's latents are already on the UNet's (scaled) latent scale
            latents = self.taesd.encode(images).latents.float()
        else:
            # The mean, not a sample: the distillation noise is added later, explicitly and seeded.
            latents = self.vae.encode(images).latent_dist.mean.float() * self.scaling_factor
        return latents

    def decode(self, latents: Tensor) -> Tensor:
        with torch.no_grad():
            images = self.vae.decode((latents / self.scaling_factor).to(self.dtypes.vae)).sample
        return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def predict_noise(self, latents_noisy: Tensor, t: Tensor, conditions: Conditions) -> Tensor:
        return self._predict(latents_noisy, t, self._row_embeddings(conditions))

    @torch.no_grad()
    def predict_noise_groups(self, groups: list[tuple[Tensor, Tensor, Conditions]]) -> list[Tensor]:
        """Every group's rows in one UNet call: each row carries its own text embedding anyway."""
        latents, t, conditions = zip(*groups)
        embeddings = torch.cat([self._row_embeddings(condition) for condition in conditions])
        prediction = self._predict(torch.cat(latents), torch.cat(t), embeddings)
        return list(prediction.split([len(rows) for rows in latents]))

    @staticmethod
    def _row_embeddings(conditions: Conditions) -> Tensor:
        """(N, L, D): each row's text embedding, by its kind and (for the prompt) its camera's view suffix."""
        prompts: PromptEmbeddings = conditions.prompts
        kinds = conditions.kinds
        embeddings = prompts.prompt_views[conditions.cameras.view.to(prompts.prompt_views.device)]
        embeddings = torch.where((kinds == PromptKind.NULL)[:, None, None], prompts.null, embeddings)
        return torch.where((kinds == PromptKind.NEGATIVE)[:, None, None], prompts.negative, embeddings)

    def _predict(self, latents_noisy: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        prediction = self._denoise(latents_noisy, t, embeddings)
        if self.prediction_type == "v_prediction":
            # v = √ᾱ·ε − √(1−ᾱ)·z0 and z_t = √ᾱ·z0 + √(1−ᾱ)·ε  ⇒  ε = √ᾱ_t·v + √(1−ᾱ_t)·z_t.
            alphas = self.alphas_cumprod[t].view(-1, 1, 1, 1)
            prediction = alphas.sqrt() * prediction + (1.0 - alphas).sqrt() * latents_noisy.float()
        return prediction

    def _denoise(self, latents_noisy: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        """The UNet's raw prediction (rows, C, h, w) in fp32; every call (warm-ups too) passes the same layouts."""
        latents = latents_noisy.to(self.dtypes.unet)
        if self.device.type == "cuda":
            latents = latents.contiguous(memory_format=torch.channels_last)
        if self._dynamic_rows:  # the row count is symbolic in the one graph: every tensor that carries it
            for tensor in (latents, t, embeddings):
                torch._dynamo.mark_dynamic(tensor, 0)
        return self.unet(latents, t, encoder_hidden_states=embeddings).sample.float()


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or Path(model).expanduser().exists() or model.count("/") > 1


def _check_local_folder(model: str) -> None:
    if not _looks_like_path(model):
        return
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"model folder {str(folder)!r} does not exist; pass a diffusers model folder or a hub id")
    missing = [name for name in COMPONENTS if not (folder / name).is_dir()]
    if missing:
        raise ModelLoadError(
            f"model folder {str(folder)!r} is not a Stable Diffusion (diffusers) folder: missing {', '.join(missing)}/; "
            "save one with StableDiffusionPipeline.save_pretrained(folder)"
        )


def read_vocabulary(model: str) -> Vocabulary | None:
    """The words (and optional "summary" line) a local model folder declares in VOCABULARY_FILE, or None (an open
    vocabulary)."""
    if not _looks_like_path(model):
        return None
    path = Path(model).expanduser() / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        declared = json.loads(path.read_text())
        words, summary = declared["words"], declared.get("summary", "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelLoadError(f"{str(path)!r} is not a vocabulary file ({{\"words\": [...]}}): {error}") from error
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise ModelLoadError(f"{str(path)!r}: \"words\" must be a list of strings")
    if not isinstance(summary, str):
        raise ModelLoadError(f"{str(path)!r}: \"summary\" must be a string")
    return Vocabulary(frozenset(word.lower() for word in words), summary)


PICKLED_WEIGHTS = ("*.bin", "*.ckpt", "*.pt", "*.pth")


def _explain_load_failure(model: str, component: str, error: Exception) -> str:
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    folder = Path(model).expanduser() / component
    if _looks_like_path(model) and folder.is_dir() and not any(folder.glob("*.safetensors")):
        pickled = sorted(path.name for pattern in PICKLED_WEIGHTS for path in folder.glob(pattern))
        if pickled:
            return (
                f"{component} of model folder {model!r} has only pickled weights ({', '.join(pickled)}), which this "
                "server does not load (unpickling can run code); convert them to .safetensors on a machine you "
                "trust (load the model and save_pretrained it) or download the model's safetensors files"
            )
    if "safetensors" in reason and not _looks_like_path(model):
        reason += "; this server loads only safetensors weights, never pickled .bin files"
    if _looks_like_path(model):
        return f"could not load {component} of model folder {model!r}: {reason}"
    return (
        f"could not load {component} of model {model!r} from the Hugging Face hub or the local cache ({reason}). "
        f"Check the id; without internet, download it once elsewhere (`huggingface-cli download {model}`) "
        "or pass a local diffusers folder"
    )


def load_unet(model: str, dtype: torch.dtype):
    """The UNet in ``dtype``; in fp16 from the repo's fp16 weight variant where it has one (what a CUDA server
    downloads: half the bytes), else from the plain weights."""
    from diffusers import UNet2DConditionModel

    if dtype == torch.float16:
        try:
            return UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, variant="fp16",
                                                        use_safetensors=True)
        except (OSError, ValueError):
            pass  # no fp16 variant here: the plain weights, cast on load
    return UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, use_safetensors=True)


def load_taesd(model: str, dtypes: ComponentDtypes):
    """AutoencoderTiny for ``model``: its folder's taesd/ if it has one, else TAESD_MODEL (hub or local cache).

    ModelLoadError naming both places and the fix when neither loads; never falls back to the VAE silently.
    """
    from diffusers import AutoencoderTiny

    local = Path(model).expanduser() / TAESD_SUBFOLDER if _looks_like_path(model) else None
    source = str(local) if local is not None and local.is_dir() else TAESD_MODEL
    try:
        return AutoencoderTiny.from_pretrained(source, torch_dtype=dtypes.taesd, use_safetensors=True)
    except (OSError, ValueError, json.JSONDecodeError) as error:
        text = str(error).strip()
        reason = text.splitlines()[0] if text else type(error).__name__
        where = f"{str(local)!r} nor " if local is not None else ""
        raise ModelLoadError(
            f"encoder taesd: could not load TAESD from {where}{TAESD_MODEL!r} (hub or local cache: {reason}). "
            f"Download it once where there is internet (`huggingface-cli download {TAESD_MODEL}`), "
            f"save an AutoencoderTiny as the model folder's {TAESD_SUBFOLDER}/, or use encoder vae"
        ) from error


@register_prior("stable-diffusion")
def load_stable_diffusion(
    model: str | None, device: torch.device, dtype: str = "auto", encode_size: int | None = None,
    encoder: str = "vae",
) -> StableDiffusionPrior:
    """``dtype``: one of DTYPE_NAMES, resolved for ``device`` by the dtype policy; ``encoder``: "vae" or "taesd"
    (a job's "auto" is resolved to one of them by ``resolve_spec``)."""
    if encoder == "auto" or encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}; expected vae or taesd (resolve_spec resolves auto)")
    dtypes = resolve_dtypes(dtype, device)
    if model is not None and model.startswith("random:"):
        from nfsd_server.guidance.random_models import build_random_stable_diffusion, build_random_taesd

        name = model.removeprefix("random:")
        taesd = build_random_taesd(name) if encoder == "taesd" else None
        return StableDiffusionPrior(**build_random_stable_diffusion(name), device=device,
                                    dtypes=dtypes, encode_size=encode_size, taesd=taesd)
    source = resolve_bundled(model or DEFAULT_MODEL)
    return StableDiffusionPrior.from_pretrained(source, device, dtypes, encode_size, encoder)
