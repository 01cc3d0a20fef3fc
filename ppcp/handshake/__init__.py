"""The handshake orchestrator (hello -> ECDH -> AUTH) and its message codecs."""
