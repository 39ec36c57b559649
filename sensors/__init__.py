"""Sensor reader processes: camera, radar and audio publishers."""
