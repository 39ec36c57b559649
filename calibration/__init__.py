"""Calibration: rig geometry and sensor clocks.

* :mod:`calibration.rig`: the rig calibration file (intrinsics, extrinsics, clocks, provenance);
* :mod:`calibration.projection`: transforms, the camera model, radar points into images and back;
* :mod:`calibration.intrinsics`, :mod:`calibration.extrinsics`, :mod:`calibration.timesync`: the
  ``fusion calibrate`` steps (argparse in :mod:`calibration.cli`);
* :mod:`calibration.clock`: online tracking of a sensor clock against the node's receive clock;
* :mod:`calibration.synthetic`: simulated data with known truth, for tests and documentation.

See ``docs/calibration.md``.
"""
