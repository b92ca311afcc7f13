"""DCAL: Dual Cross-Attention Learning (Zhu et al., CVPR 2022) for FGVC and object re-ID."""
