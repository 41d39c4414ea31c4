"""``dashboard.*`` settings: sessions and the one-time admin sign-in link."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class DashboardSettings(BaseModel):
    """The web dashboard at `/`: sign-in sessions."""

    model_config = ConfigDict(extra="forbid")

    secret_key: SecretStr | None = Field(
        default=None,
        description=(
            "Key that encrypts and signs session cookies (any length; hashed to 32 bytes). "
            "Unset: a random key kept in `<data_dir>/dashboard.key` (set it when several web "
            "processes on different hosts serve one Bosun)."
        ),
    )
    session_hours: int = Field(
        default=12, ge=1, le=24 * 30, description="How long a sign-in lasts."
    )
    admin_link_minutes: int = Field(
        default=15,
        ge=1,
        le=24 * 60,
        description="How long the one-time admin sign-in link `bosun up` prints stays valid.",
    )
