"""Explainability: Grad-CAM on the malignancy logit (the mechanism) and its pictures."""
