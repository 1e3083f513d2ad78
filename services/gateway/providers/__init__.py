"""Upstream providers, one module each: build the upstream request, read its usage, classify its errors."""
