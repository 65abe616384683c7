"""HTTP adapters: the public API (API key), the admin API (JWT), health and OpenAPI."""
