"""The messenger's HTTP API (Litestar)."""
