"""Backbones, dual-view wrapper, necks, attentions and losses of the MCB-U code base."""
