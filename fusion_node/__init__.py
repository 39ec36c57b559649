"""Fusion node: synchronise sensor streams, run the encoders and fusion head, publish fused events."""
