"""The emulated GitHub App: its key pair, slug, bot user and webhook configuration."""

from __future__ import annotations

import functools
import re
import secrets

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .context import Context
from .state import App


@functools.cache
def _keypair() -> tuple[str, str]:
    """One RSA key pair per process: key generation is the slowest step of a fresh emulator,
    and each emulator's App id differs, so JWTs of one never verify against another."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def create_app(
    ctx: Context, webhook_url: str, webhook_secret: str | None, name: str | None = None
) -> App:
    """Create the App, or (called again) change its webhook URL and secret."""
    s = ctx.store
    secret = webhook_secret if webhook_secret is not None else secrets.token_hex(20)
    with s.lock:
        if s.app is not None:
            s.app.webhook_url = webhook_url
            s.app.webhook_secret = secret
            return s.app
        name = name or "Bosun Emulated"
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        private, public = _keypair()
        owner = s.user("emulated-app-owner")
        bot = s.user(f"{slug}[bot]", "Bot")
        s.app = App(
            id=s.ids.next("app"),
            slug=slug,
            name=name,
            owner=owner,
            private_key_pem=private,
            public_key_pem=public,
            webhook_url=webhook_url,
            webhook_secret=secret,
            hook_id=s.ids.next("hook"),
            bot=bot,
        )
        return s.app
