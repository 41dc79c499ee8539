"""``protection: plain`` on the client: the release and the reply travel in the clear."""

from __future__ import annotations

from fedmuscle_secure.client.protection.base import ClientProtection


class PlainClientProtection(ClientProtection):
    """Every hook as :class:`ClientProtection` defines it (the plain exchange)."""
