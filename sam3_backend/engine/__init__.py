"""The model side: SAM 3 loading, image/video engines, caches, training. Never sees Label Studio JSON."""
