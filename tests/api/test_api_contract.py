"""The /v1 contract the Blender add-on codes against, pinned from the served OpenAPI schema.

A change here is a change to the add-on's world: bump the API version instead of editing quietly.
"""

from __future__ import annotations

import pytest

from nfsd_contract import NFSD_NEGATIVE_PROMPT


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    from fastapi.testclient import TestClient

    from nfsd_server.api.app import ServerConfig, create_app

    app = create_app(ServerConfig(data_dir=tmp_path_factory.mktemp("jobs"), token="t"), start_worker=False)
    with TestClient(app) as client:
        response = client.get("/openapi.json")  # the default path, readable without a token
        assert response.status_code == 200
        return response.json()


def test_api_contract_routes_and_methods(spec):
    routes = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routes == {
        ("/v1/jobs", "post"), ("/v1/jobs", "get"), ("/v1/jobs", "delete"),
        ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}", "delete"),
        ("/v1/jobs/{job_id}/preview.png", "get"),
        ("/v1/jobs/{job_id}/result.glb", "get"), ("/v1/jobs/{job_id}/result.json", "get"),
        ("/v1/health", "get"), ("/v1/models", "get"), ("/v1/meshes", "post"),
        ("/v1/models/downloads", "post"), ("/v1/models/downloads", "get"),
        ("/v1/models/downloads/{download_id}", "get"), ("/v1/models/downloads/{download_id}", "delete"),
    }
    assert "202" in spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert "image/png" in spec["paths"]["/v1/jobs/{job_id}/preview.png"]["get"]["responses"]["200"]["content"]
    assert "model/gltf-binary" in spec["paths"]["/v1/jobs/{job_id}/result.glb"]["get"]["responses"]["200"]["content"]


def test_api_contract_bearer_auth_on_every_route_but_health(spec):
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer",
        "description": "`Authorization: Bearer <token>`; the token is the server's --token or NFSD_TOKEN.",
    }
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            expected = [] if path == "/v1/health" else [{"bearer": []}]
            assert operation.get("security", []) == expected, (method, path)


def test_api_contract_job_request(spec):
    schema = spec["components"]["schemas"]["JobRequest"]
    assert schema["additionalProperties"] is False and schema["required"] == ["prompt"]
    fields = schema["properties"]
    assert set(fields) == {
        "prompt", "negative_prompt", "method", "guidance_scale", "seed", "steps", "preset", "poly_budget",
        "texture_size", "prior", "model", "dtype", "encoder", "init_mesh", "shape_strength", "keep_geometry",
        "janus_guard", "edit_of", "source_prompt", "edit_strength", "keep_shape",
    }
    assert fields["encoder"]["enum"] == ["auto", "vae", "taesd", "pooling"] and fields["encoder"]["default"] == "auto"
    assert fields["dtype"]["enum"] == ["auto", "fp16", "bf16", "fp32"] and fields["dtype"]["default"] == "auto"
    assert (fields["prompt"]["minLength"], fields["prompt"]["maxLength"]) == (1, 1000)
    assert fields["negative_prompt"]["default"] == NFSD_NEGATIVE_PROMPT
    assert fields["method"] == {"enum": ["nfsd", "sds"], "type": "string", "title": "Method", "default": "nfsd",
                                "description": fields["method"]["description"]}
    assert all(field.get("description") for field in fields.values())  # every field says what it does
    assert fields["preset"]["enum"] == ["draft", "standard", "high"] and fields["preset"]["default"] == "standard"
    assert fields["texture_size"]["enum"] == [512, 1024, 2048] and fields["texture_size"]["default"] == 1024
    assert fields["poly_budget"]["default"] == 20000
    assert (fields["poly_budget"]["minimum"], fields["poly_budget"]["maximum"]) == (100, 500000)
    guidance = next(option for option in fields["guidance_scale"]["anyOf"] if option.get("type") == "number")
    assert (guidance["exclusiveMinimum"], guidance["maximum"]) == (0, 500)
    seed = next(option for option in fields["seed"]["anyOf"] if option.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == (0, 2**31 - 1)
    steps = next(option for option in fields["steps"]["anyOf"] if option.get("type") == "integer")
    assert (steps["minimum"], steps["maximum"]) == (1, 100000)
    mesh_id = next(option for option in fields["init_mesh"]["anyOf"] if option.get("type") == "string")
    assert mesh_id["pattern"] == "^[0-9a-f]{32}$"  # an id from POST /v1/meshes
    source_job = next(option for option in fields["edit_of"]["anyOf"] if option.get("type") == "string")
    assert source_job["pattern"] == "^[0-9a-f]{32}$"  # a job id, not a path on the server
    strength = next(option for option in fields["shape_strength"]["anyOf"] if option.get("type") == "number")
    assert (strength["minimum"], strength["maximum"]) == (0, 1)
    assert fields["keep_geometry"] == {"type": "boolean", "title": "Keep Geometry", "default": False,
                                       "description": fields["keep_geometry"]["description"]}
    assert fields["janus_guard"]["type"] == "boolean" and fields["janus_guard"]["default"] is True
    for name in ("guidance_scale", "seed", "steps", "prior", "model", "init_mesh", "shape_strength"):  # optional, and null means "default"
        assert {"type": "null"} in fields[name]["anyOf"], name


def test_api_contract_job_status_and_health(spec):
    schemas = spec["components"]["schemas"]
    # The status echoes the resolved job: the request's fields, none of them left to a default.
    assert set(schemas["JobSpec"]["properties"]) == set(schemas["JobRequest"]["properties"])
    assert {"prompt", "guidance_scale", "seed", "steps", "prior", "encoder"} <= set(schemas["JobSpec"]["required"])
    assert set(schemas["JobStatus"]["properties"]) == {
        "id", "state", "step", "total", "loss", "eta_s", "queue_position", "error", "hint", "request",
        "created_at", "started_at", "finished_at", "has_preview", "preview_step", "resumed_from_step",
    }
    assert schemas["JobStatus"]["properties"]["state"]["enum"] == [
        "queued", "running", "exporting", "done", "failed", "cancelled",
    ]
    assert set(schemas["JobList"]["properties"]) == {"jobs", "total", "next_offset"}
    assert set(schemas["PurgeResult"]["properties"]) == {"deleted", "set_aside", "meshes"}  # added fields only
    paging = {p["name"]: p["schema"] for p in spec["paths"]["/v1/jobs"]["get"]["parameters"]}
    assert paging["limit"]["default"] == 100 and paging["limit"]["maximum"] == 1000 and paging["offset"]["default"] == 0
    assert set(schemas["JobCreated"]["properties"]) == {"id"}
    assert set(schemas["Health"]["properties"]) == {
        "version", "device", "default_prior", "default_model", "models_loaded", "queue_length", "running_job", "memory",
        "authenticated",
    }
    assert set(schemas["MemoryUsage"]["properties"]) == {"rss_bytes", "cuda_allocated_bytes"}
    assert set(schemas["ModelList"]["properties"]) == {"models", "cache_dir"}
    assert set(schemas["ModelInfo"]["properties"]) == {
        "id", "label", "prior", "model", "source", "cached", "size_bytes", "download_bytes", "default",
        "taesd_cached",
    }
    assert set(schemas["ErrorBody"]["properties"]) == {"detail", "hint"}
