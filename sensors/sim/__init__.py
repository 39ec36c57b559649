"""Tri-modal scene simulator: camera frames, radar point clouds and audio that agree.

One world, rendered three ways, with one job per module:

- :mod:`sensors.sim.world`: rig geometry, targets, sound events, scenes (random, live, the demo's);
- :mod:`sensors.sim.render`: the camera, radar and microphone renderers;
- :mod:`sensors.sim.assets`: the real recordings mixed in and their train/eval split;
- :mod:`sensors.sim.live`: ``fusion sensor sim``, the simulator as live sensors;
- :mod:`sensors.sim.make_demo`: the demo's simulated radar capture and its sound mix.

Training (``models/dataset.py``) renders samples with the same world, renderers and assets as
the live sensor. The class list, the audio rate and the speed of sound come from
:mod:`fusion_node.vocabulary`.
"""

from .assets import Assets, load_assets
from .render import render_audio, render_camera, render_radar
from .world import RigGeometry, Scene, SoundEvent, Target, sample_scene, scene_labels

__all__ = ["Assets", "load_assets", "render_audio", "render_camera", "render_radar", "RigGeometry", "Scene",
           "SoundEvent", "Target", "sample_scene", "scene_labels"]
