"""One contract: the add-on and the server read every shared value and the job's field list from
server/nfsd_contract/ (the add-on through nfsd_blender/contract.py, which loads the vendored or installed copy).

The add-on's request is checked against the server's served OpenAPI schema, and a scan of the tree checks
that no value of the contract is typed a second time anywhere else.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import nfsd_contract as contract

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from fastapi.testclient import TestClient

    from nfsd_server.api.app import ServerConfig, create_app

    app = create_app(ServerConfig(data_dir=tmp_path_factory.mktemp("jobs"), token="t"), start_worker=False)
    with TestClient(app) as client:
        yield client, client.get("/openapi.json").json()


def _enum(spec, field):
    """The enum of a JobRequest field, following $ref and anyOf (nullable fields)."""
    schema = spec["components"]["schemas"]["JobRequest"]["properties"][field]
    for option in schema.get("anyOf", [schema]):
        if "$ref" in option:
            option = spec["components"]["schemas"][option["$ref"].rsplit("/", 1)[-1]]
        if "enum" in option:
            return tuple(option["enum"])
    raise AssertionError(f"{field} has no enum in the schema: {schema}")


def _bounds(spec, field):
    schema = spec["components"]["schemas"]["JobRequest"]["properties"][field]
    for option in schema.get("anyOf", [schema]):
        if option.get("type") in ("integer", "number"):
            return option.get("minimum", option.get("exclusiveMinimum")), option.get("maximum")
    raise AssertionError(f"{field} has no numeric bounds: {schema}")


def test_the_add_ons_request_has_exactly_the_servers_fields(served):
    _, spec = served
    request = contract.job_request("a red ball")
    server_fields = set(spec["components"]["schemas"]["JobRequest"]["properties"])
    assert tuple(request) == contract.FIELD_NAMES
    assert set(request) == server_fields


def test_enums_and_limits_match_the_served_schema(served):
    _, spec = served
    assert _enum(spec, "method") == contract.METHODS
    assert _enum(spec, "preset") == contract.PRESETS
    assert _enum(spec, "texture_size") == contract.TEXTURE_SIZES
    assert _enum(spec, "prior") == contract.PRIORS
    assert _enum(spec, "dtype") == contract.DTYPES
    assert _enum(spec, "encoder") == contract.ENCODERS + (contract.ANALYTIC_ENCODER,)  # the last: analytic only
    assert _bounds(spec, "seed") == (0, contract.MAX_SEED)
    assert _bounds(spec, "steps") == (1, contract.MAX_STEPS)
    assert _bounds(spec, "poly_budget") == (contract.MIN_POLY_BUDGET, contract.MAX_POLY_BUDGET)
    assert _bounds(spec, "guidance_scale") == (0, contract.MAX_GUIDANCE_SCALE)
    fields = spec["components"]["schemas"]["JobRequest"]["properties"]
    assert fields["prompt"]["maxLength"] == contract.MAX_PROMPT_CHARS
    assert fields["negative_prompt"]["default"] == contract.NFSD_NEGATIVE_PROMPT
    assert fields["preset"]["default"] == contract.DEFAULT_PRESET
    assert fields["texture_size"]["default"] == contract.DEFAULT_TEXTURE_SIZE
    assert fields["poly_budget"]["default"] == contract.DEFAULT_POLY_BUDGET


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"method": "SDS", "guidance_scale": 100.0, "seed": contract.MAX_SEED, "steps": contract.MAX_STEPS,
         "preset": "high", "poly_budget": contract.MAX_POLY_BUDGET, "texture_size": 2048, "prior": "analytic",
         "dtype": "fp32"},
        {"method": "NFSD", "guidance_scale": 0.0, "seed": 0, "steps": 0, "preset": "draft",
         "poly_budget": contract.MIN_POLY_BUDGET, "texture_size": 512, "model": ""},  # form zeros → defaults
    ],
)
def test_every_request_the_add_on_can_build_is_accepted(served, overrides):
    client, _ = served
    response = client.post("/v1/jobs", json=contract.job_request("a red ball", **overrides),
                           headers={"Authorization": "Bearer t"})
    assert response.status_code == 202, response.json()


@pytest.mark.parametrize("prior", contract.PRIORS)
@pytest.mark.parametrize("choice", contract.ENCODERS)
def test_every_rgb_encoder_choice_of_the_add_on_is_accepted(served, choice, prior):
    from nfsd_blender.jobs import request_encoder  # what the add-on's build_request sends for its preference

    client, _ = served
    for preset in contract.PRESETS:
        body = contract.job_request("a red ball", preset=preset, prior=prior, encoder=request_encoder(prior, choice))
        response = client.post("/v1/jobs", json=body, headers={"Authorization": "Bearer t"})
        assert response.status_code == 202, (body["encoder"], response.json())


def test_the_contract_imports_without_blender():
    code = "import sys, nfsd_blender.contract; assert 'bpy' not in sys.modules, 'bpy imported'; print('ok')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


# Literal spellings of contract values that must appear nowhere but contract.py (tests pin some by hand,
# deliberately, and are not scanned).
TYPED_TWICE = {
    "negative prompt": re.compile(r"unrealistic, blurry"),
    "default port": re.compile(r"\b8765\b|:8000\b"),
    "seed limit": re.compile(r"2\s*\*\*\s*31"),
    "texture sizes": re.compile(r"512,\s*1024,\s*2048|\"512\",\s*\"1024\""),
    "preset names": re.compile(r"\"draft\",\s*\"standard\",\s*\"high\""),
    "method names": re.compile(r"\"nfsd\",\s*\"sds\"|\"NFSD\":\s*7\.5"),
    "guidance defaults": re.compile(r"\"nfsd\":\s*7\.5"),
    "prior names": re.compile(r"\"stable-diffusion\",\s*\"analytic\""),
    "default model": re.compile(r"stabilityai/stable-diffusion-2-1-base\""),
    "dtype names": re.compile(r"\"auto\",\s*\"fp16\""),
    "encoder names": re.compile(r"\"vae\",\s*\"taesd\""),
}


def test_no_contract_value_is_typed_twice():
    scanned = [*ROOT.glob("nfsd_blender/**/*.py"), *ROOT.glob("server/**/*.py"), *ROOT.glob("scripts/*.py")]
    assert len(scanned) > 30
    found = []
    for path in scanned:
        if path.name == "contract.py" or "nfsd_contract" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        for what, pattern in TYPED_TWICE.items():
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what} ({match.group(0)!r})")
    assert not found, "use nfsd_contract instead:\n" + "\n".join(found)


def test_the_job_field_list_is_written_once():
    """Every layer derives the job's fields from nfsd_contract.FIELDS: no other file lists them by hand.

    A hand-written list shows up as several field names quoted close together (a tuple, a dict literal, a
    loop over names); the contract's own definitions are the one place they may stand."""
    scanned = [*ROOT.glob("nfsd_blender/**/*.py"), *ROOT.glob("server/nfsd_server/**/*.py"), *ROOT.glob("scripts/*.py")]
    names = [name for name in contract.FIELD_NAMES if name not in ("prompt", "model", "prior", "seed", "steps")]
    listing = re.compile("|".join(rf"[\"']{name}[\"']" for name in names))
    found = []
    for path in scanned:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if len(listing.findall(line)) >= 3:
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "derive these from nfsd_contract.FIELDS:\n" + "\n".join(found)


def test_a_spec_survives_its_record_and_refuses_a_damaged_one():
    spec = contract.resolve_spec("a red ball", seed=3, method="sds", preset="draft")
    assert contract.JobSpec.from_dict(spec.to_dict()) == spec
    assert (spec.guidance_scale, spec.steps, spec.encoder, spec.model) == (100.0, 400, "pooling", None)
    with pytest.raises(ValueError, match=r"unknown job field\(s\) \['colour'\]"):
        contract.JobSpec.from_dict(spec.to_dict() | {"colour": "red"})
    with pytest.raises(ValueError, match="not a complete job"):
        contract.JobSpec.from_dict({"prompt": "a red ball"})
    with pytest.raises(ValueError, match="poly_budget must be in 100..500000, got 5"):
        contract.JobSpec.from_dict(spec.to_dict() | {"poly_budget": 5})
    with pytest.raises(ValueError, match="seed must be an integer, got True"):
        contract.JobSpec.from_dict(spec.to_dict() | {"seed": True})


def test_the_form_conventions_of_a_request():
    body = contract.job_request("  a red ball ", method="SDS", texture_size="2048", guidance_scale=0.0, steps=0,
                                seed=0, shape_strength=0.0, model="", prior="")
    assert body["prompt"] == "a red ball" and body["method"] == "sds" and body["texture_size"] == 2048
    # 0 is no guidance scale and no step count: "the default"; but seed 0 and strength 0 are real values.
    assert (body["guidance_scale"], body["steps"], body["model"], body["prior"]) == (None, None, None, None)
    assert (body["seed"], body["shape_strength"]) == (0, 0.0)
    with pytest.raises(ValueError, match="unknown job field"):
        contract.job_request("x", colour="red")


def test_the_backend_install_holds_no_blender_modules_and_the_zip_carries_the_contract(tmp_path):
    """pyproject's packages are the backend and the contract; the add-on zip vendors the contract."""
    import tomllib
    import zipfile

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert packages["include"] == ["nfsd_server*", "nfsd_contract"] and packages["where"] == ["server"]
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_addon
    finally:
        sys.path.pop(0)
    archive = build_addon.build(tmp_path)
    names = zipfile.ZipFile(archive).namelist()
    assert "nfsd_contract/spec.py" in names and "contract.py" in names
    assert not any(name.startswith(("server/", "nfsd_server")) for name in names)


def test_the_addon_build_says_which_setuptools_it_needs():
    """The build skips pip's isolation (offline), so a fresh venv's setuptools 65 would fail deep in pip on
    pyproject's SPDX license string; the build says what to install instead, and the dev extra carries it."""
    import importlib.metadata
    import tomllib

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_addon
    finally:
        sys.path.pop(0)
    assert build_addon.required_build_tools() == {"setuptools": (77,)}
    with pytest.raises(SystemExit, match=r"needs setuptools >= 77 .* it is 65\.5\.0\. Run: .* -m pip install 'setuptools>=77'"):
        build_addon.check_build_tools(version_of=lambda name: "65.5.0")

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    with pytest.raises(SystemExit, match="it is not installed"):
        build_addon.check_build_tools(version_of=missing)
    build_addon.check_build_tools(version_of=lambda name: "77.0.3")
    build_addon.check_build_tools()  # this venv: the dev extra's setuptools
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert "setuptools>=77" in [requirement.split("#")[0].strip() for requirement in dev]
