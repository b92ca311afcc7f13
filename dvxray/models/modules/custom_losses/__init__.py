"""Losses selectable with --base_loss."""
