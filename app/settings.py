"""Service settings, read from ``STACKSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STACKSERVE_")

    bundle: Path = Path("/bundle")
    max_tta: int = 16  # most TTA views a request may ask for (the bundle's policy may allow fewer)
    max_files: int = 64  # images per request
    max_body_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 40_000_000  # per image; larger ones are refused as decompression bombs
