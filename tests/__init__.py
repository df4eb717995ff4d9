"""DDPM Studio's tests. A package so that ``tests.helpers`` is this folder's, not another installed ``tests``."""
