"""Command-line tools (weight conversion)."""
