"""signing-proxy: signs requests to HMAC-authenticated APIs for apps that hold no secrets."""

__version__ = "0.1.0"
