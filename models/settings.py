"""Settings of an installation, read from PAGOFLOW_* environment variables (or a .env file)."""

from __future__ import annotations

from enum import StrEnum
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class PayloadPolicy(StrEnum):
    """When the event journal keeps request and response payloads."""

    ALWAYS = "always"
    NEVER = "never"
    ON_ERROR = "on_error"


class SpecsNotFoundError(RuntimeError):
    """The directory of the official pagoPA specifications is missing or incomplete."""

    def __init__(self, path: Path, missing: str) -> None:
        self.path = path
        self.missing = missing
        super().__init__(
            f"pagoPA specifications not found: {missing} is missing under {path}. "
            "Set PAGOFLOW_SPECS_DIR to the folder that holds pagopa-api/ (by default ../shared/pagopa "
            "beside the project)."
        )


class Settings(BaseSettings):
    """Every setting of pagoflow; see README 'Configuration'."""

    model_config = SettingsConfigDict(env_prefix="PAGOFLOW_", env_file=".env", extra="ignore")

    database_url: str = Field(
        default="sqlite:///pagoflow.db",
        description="SQLAlchemy URL of the platform database (SQLite file in the working directory by default).",
    )
    specs_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "pagopa",
        description="Folder of the official pagoPA WSDL/XSD/OpenAPI files (holds pagopa-api/).",
    )
    treasury_specs_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "treasury",
        description="Folder of the treasury schemas (OPI, camt).",
    )
    journal_payloads: PayloadPolicy = Field(
        default=PayloadPolicy.ON_ERROR,
        description="When the event journal stores payloads: always, never or on_error.",
    )
    journal_payload_max_bytes: int = Field(default=256_000, ge=0)
    api_base_path: str = Field(
        default="/api/pendenze/v2",
        description="Where the GovPay-compatible API Pendenze is mounted (a GovPay client changes only its base URL).",
    )
    station_path: str = Field(
        default="/pagopa/paForNode",
        description="Where the paForNode SOAP station listens (the URL registered at pagoPA for the stations).",
    )
    registry_cache_seconds: float = Field(default=30.0, ge=0, description="How long the web process caches the registry.")
    work_dir: Path = Field(default=Path("var"), description="Where outcome files, notices and reports go.")
    secret_key: SecretStr | None = Field(default=None, description="Key for signing sessions (console).")
    console_https_only: bool = Field(
        default=False, description="Send the console's session cookie over HTTPS only (behind a TLS proxy).")

    def pagopa_api_dir(self) -> Path:
        """The pagopa-api tree of the specs folder, checked to exist."""
        root = self.specs_dir.expanduser().resolve()
        api = root / "pagopa-api"
        if not api.is_dir():
            raise SpecsNotFoundError(root, "pagopa-api/")
        return api

    def spec_path(self, relative: str) -> Path:
        """Path of one official spec file under pagopa-api/, e.g. 'wsdl/xsd/paForNode.xsd'."""
        path = self.pagopa_api_dir() / relative
        if not path.is_file():
            raise SpecsNotFoundError(self.specs_dir, f"pagopa-api/{relative}")
        return path


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; tests clear it with get_settings.cache_clear())."""
    return Settings()
