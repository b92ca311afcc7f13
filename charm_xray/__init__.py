"""CHARM-Xray (luythoangduy/CHARM-Xray) in plain PyTorch over ``common``: see README.md."""
