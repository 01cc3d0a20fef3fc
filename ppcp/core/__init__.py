"""Core vocabulary: errors, events, states and their transitions, settings."""
