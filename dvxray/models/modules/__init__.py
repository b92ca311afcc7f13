"""Neck, fusion and attention building blocks."""
