"""One dtype policy: what each --dtype means per component and device, and that every dtype still trains."""

import importlib.util
from pathlib import Path

import pytest
import torch
from nfsd_server.guidance.dtype_policy import DTYPE_NAMES, ComponentDtypes, resolve_dtypes
from nfsd_server.guidance.registry import load_prior

# Stated tolerances: relative L2 error of the image gradient vs fp32 on the tiny random SD
# (measured 9e-3 for fp16 and 7e-2 for bf16 by benchmarks/dtype_error.py).
GRADIENT_TOLERANCE = {"fp16": 3e-2, "bf16": 2e-1}


def load_benchmark():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "dtype_error.py"
    spec = importlib.util.spec_from_file_location("dtype_error", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_auto_is_fp32_on_cpu_and_mps_and_fp16_unet_on_cuda_with_fp32_text_encoder_and_vae():
    assert resolve_dtypes("auto", "cpu") == ComponentDtypes(torch.float32, torch.float32, torch.float32)
    assert resolve_dtypes("auto", "mps") == ComponentDtypes(torch.float32, torch.float32, torch.float32)
    assert resolve_dtypes("auto", "cuda") == ComponentDtypes(torch.float16, torch.float32, torch.float32)
    assert resolve_dtypes("fp32", "cuda").unet == torch.float32


def test_bf16_on_cuda_only_where_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ValueError, match=r"bf16 is not native on this GPU \(Tesla T4, compute capability 7.5 < 8.0\)"
                                         r".*use --dtype fp16"):
        resolve_dtypes("bf16", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_dtypes("bf16", "cuda").unet == torch.bfloat16
    assert resolve_dtypes("auto", "cuda").unet == torch.float16  # bf16 only when asked


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="unknown dtype 'fp8'; expected one of auto, fp16, bf16, fp32"):
        resolve_dtypes("fp8", "cpu")


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_the_prior_puts_each_component_in_its_policy_dtype(tiny_sd_dir, name):
    prior = load_prior("stable-diffusion", str(tiny_sd_dir), "cpu", dtype=name)
    expected = resolve_dtypes(name, "cpu")
    assert (prior.unet.dtype, prior.text_encoder.dtype, prior.vae.dtype) == (
        expected.unet, expected.text_encoder, expected.vae
    )
    assert prior.prepare_prompts("a cup", "ugly").prompt_views.dtype == expected.unet


def test_every_dtype_gives_finite_gradients_close_to_fp32(tiny_sd_dir):
    table = load_benchmark().measure(str(tiny_sd_dir), batches=2, batch_size=2)
    for name, (delta_c, direction, grad, finite) in table.items():
        assert finite, name
        assert grad < GRADIENT_TOLERANCE[name], (name, grad)
        assert 0 < delta_c < GRADIENT_TOLERANCE[name], (name, delta_c)


def test_cli_refuses_an_unknown_dtype_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "nfsd_server", "generate", "a red ball", "--dtype", "fp8"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2 and "invalid choice: 'fp8'" in result.stderr


def test_the_analytic_prior_refuses_half_precision():
    with pytest.raises(ValueError, match="analytic prior runs in fp32 only"):
        load_prior("analytic", None, "cpu", dtype="fp16")


def test_the_text_encoder_leaves_the_gpu_and_embeddings_arrive_on_the_unets_device():
    from nfsd_server.guidance.dtype_policy import text_encoder_device

    assert text_encoder_device("cuda:1") == torch.device("cpu")
    assert text_encoder_device("mps") == torch.device("mps")
    assert text_encoder_device("cpu") == torch.device("cpu")
