"""Ephemeral ECDH P-256 key pairs and peer point validation."""
