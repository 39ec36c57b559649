"""Calibration: rig geometry and sensor clocks."""
