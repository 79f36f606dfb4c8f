"""AUTOMATIC1111's REST API (`/sdapi/v1/...`): `schemas` (request bodies), `convert` (A1111 <-> Homegrown,
pure functions), `routes` (the FastAPI app over the studio)."""

from .routes import PREFIX, build_api, mount

__all__ = ["PREFIX", "build_api", "mount"]
