"""Model definitions (torch) and their export to ONNX bundles for the fusion node.

``models.architectures`` holds the encoders, the fusion head and the contrastive-alignment
wrapper; ``models.export`` writes a bundle (one ONNX file per model plus ``manifest.json``).
Both need torch, which is for training and export only. This package ``__init__`` deliberately
imports nothing, so that locating bundle files under ``models/`` never pulls torch into the
node process.
"""
