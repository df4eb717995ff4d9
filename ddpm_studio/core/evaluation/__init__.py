"""Judging a model: FID, KID and IS on Inception features, and the likelihood bound in bits/dim."""
