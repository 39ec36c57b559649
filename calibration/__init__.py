"""Calibration: the procedures that measure a rig, and the geometry to use what they measure.

The rig calibration file itself (:mod:`fusion_node.rig`) and online clock tracking
(:mod:`fusion_node.clock`) belong to the node's bottom layer, which reads them at run time.

* :mod:`calibration.projection`: transforms, the camera model, radar points into images and back;
* :mod:`calibration.intrinsics`, :mod:`calibration.extrinsics`, :mod:`calibration.timesync`: the
  ``fusion calibrate`` steps (argparse in :mod:`calibration.cli`);
* :mod:`calibration.synthetic`: simulated data with known truth, for tests and documentation.

See ``docs/calibration.md``.
"""
