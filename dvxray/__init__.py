"""MCB-Convex + CoordAtt-U (MCB-U) on DvXray: dual-view multi-label X-ray classification."""
