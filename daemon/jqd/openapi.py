"""The OpenAPI document served at /openapi.json (placeholder until the full document lands)."""


def openapi_document(job_types: list[str]) -> dict:
    return {"openapi": "3.0.3", "info": {"title": "jqd", "version": "0.1.0"}, "paths": {}}
