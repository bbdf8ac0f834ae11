"""Engine fixtures: a broken model, to check that the engine says so instead of exporting a blob."""

import shutil

import pytest
import torch


@pytest.fixture(scope="session")
def nan_sd_dir(tiny_sd_dir, tmp_path_factory):
    """The tiny random SD with every UNet weight set to NaN."""
    from diffusers import UNet2DConditionModel

    folder = tmp_path_factory.mktemp("nan-sd") / "model"
    shutil.copytree(tiny_sd_dir, folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    with torch.no_grad():
        for param in unet.parameters():
            param.fill_(float("nan"))
    unet.save_pretrained(folder / "unet")
    return folder
