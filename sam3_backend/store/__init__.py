"""Durable stores fed by Label Studio (the annotation store for fine-tuning)."""
