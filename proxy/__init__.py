"""signing-proxy: sign requests to HMAC-authenticated APIs on behalf of apps that hold no secrets."""

__version__ = "0.1.0"
