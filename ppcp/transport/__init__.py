"""Frames, the sans-I/O connection, and the asyncio and blocking drivers."""
