"""PSK handling (PBKDF2), the HKDF key schedule and HMAC proofs, AES-256-GCM records."""
