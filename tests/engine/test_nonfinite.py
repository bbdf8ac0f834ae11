"""A model that outputs NaN must fail the job with one line, not 'succeed' with the starting blob."""

import os
import subprocess
import sys

import pytest
import torch
from nfsd_server.guidance.nonfinite import NONFINITE_STEP_LIMIT, NonFiniteOutputError, NonFiniteWatch


def nfsd(*args):
    return subprocess.run([sys.executable, "-m", "nfsd_server", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_nan_model_fails_generate_with_one_line_and_no_glb(nan_sd_dir, tmp_path):
    out = tmp_path / "out"
    result = nfsd("generate", "a red ball", "--model", str(nan_sd_dir), "--steps", "30", "--out", str(out))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        f"nfsd generate: error: the model produced NaN at step 1 ({NONFINITE_STEP_LIMIT} steps in a row); "
        "the model's weights may be broken: check the model, or lower the guidance scale"
    ], result.stderr
    assert not list(out.glob("*.glb"))


def watch_over(steps_bad: list[bool], dtype=torch.float16) -> NonFiniteWatch:
    from nfsd_server.guidance.nonfinite import nonfinite_hint

    watch = NonFiniteWatch(torch.device("cpu"), nonfinite_hint(dtype))
    for step, bad in enumerate(steps_bad, start=1):
        watch.observe(torch.tensor([1.0, float("nan") if bad else 2.0]), step)
    return watch


def test_isolated_nonfinite_steps_are_survived():
    pattern = ([True] * (NONFINITE_STEP_LIMIT - 1) + [False]) * 3
    watch = watch_over(pattern)
    watch.check()  # no raise
    assert int(watch.total) == 3 * (NONFINITE_STEP_LIMIT - 1)


def test_a_persistent_run_names_its_first_step_and_suggests_fp32_in_half_precision():
    watch = watch_over([False, True, False, False] + [True] * NONFINITE_STEP_LIMIT + [False] * 3)
    with pytest.raises(NonFiniteOutputError, match=r"^the model produced NaN at step 5 \(.*\); try --dtype fp32$"):
        watch.check()


def test_infinite_outputs_are_named_as_such():
    watch = NonFiniteWatch(torch.device("cpu"), "try --dtype fp32")
    for step in range(1, NONFINITE_STEP_LIMIT + 1):
        watch.observe(torch.tensor([float("inf")]), step)
    with pytest.raises(NonFiniteOutputError, match="produced infinite values at step 1"):
        watch.check()


def test_the_api_hint_for_a_nan_model_says_fp32():
    from nfsd_server.api.errors import describe_failure

    message, hint = describe_failure(NonFiniteOutputError("the model produced NaN at step 3 (5 steps in a row)"))
    assert message.startswith("the model produced NaN at step 3") and "fp32" in hint
