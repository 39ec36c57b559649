"""Radar binding on real simulated windows: what of the camera it may train, and what it must leave alone."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models.architectures import CameraEncoder
from models.dataset import PREPROCESS, RADAR_FRAME_INTERVAL_S, generate, radar_window
from models.radar_bind import RadarBindConfig, camera_tensor, f1_threshold, train_radar

WHERE = ("squeeze.", "spatial_proj.")


@pytest.fixture(scope="module")
def windows():
    return generate(48, seed=11, split="train", workers=1, progress=False)


def _camera() -> CameraEncoder:
    torch.manual_seed(3)
    return CameraEncoder(32, blocks=((16, 2), (32, 2), (32, 2)), spatial_dim=8)


def _bind(windows, camera: CameraEncoder, camera_where: bool) -> set[str]:
    """Binds a radar to ``camera``; the names of the camera's weights that changed."""
    before = copy.deepcopy(camera.state_dict())
    train_radar(windows, camera, RadarBindConfig(seed=0, epochs=2, batch=16, embed_dim=32, camera_where=camera_where),
                progress=False, log=lambda _: None)
    after = camera.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_binding_trains_the_cameras_where_and_leaves_its_what_and_backbone_alone(windows):
    camera = _camera()
    original = copy.deepcopy(camera).eval()
    changed = _bind(windows, camera, camera_where=True)
    assert changed and all(k.startswith(WHERE) for k in changed), changed
    assert {k.split(".")[0] + "." for k in changed} == set(WHERE)
    images = camera_tensor(windows.image[:6])
    with torch.no_grad():
        old, new = original(images), camera(images)
    k = camera.semantic_dim
    # The what part (all any camera classifier reads) is the same to the bit; the where part moved.
    assert torch.equal(old[:, :k], new[:, :k])
    assert not torch.allclose(old[:, k:], new[:, k:])
    assert all(p.requires_grad for p in camera.parameters()) and not camera.training


def test_a_frozen_camera_is_left_exactly_as_it_was(windows):
    camera = _camera()
    assert _bind(windows, camera, camera_where=False) == set()


def test_a_camera_without_a_spatial_part_is_left_alone_too(windows):
    torch.manual_seed(3)
    camera = CameraEncoder(32, blocks=((16, 2), (32, 2), (32, 2)))
    assert camera.where_modules == ()
    assert _bind(windows, camera, camera_where=True) == set()


def test_a_radar_threshold_is_the_best_f1_among_the_precise_ones_not_the_lowest_precise_one():
    positives = np.r_[np.linspace(0.35, 0.95, 99), 0.12]
    negatives = np.r_[np.full(9, 0.2), np.full(200, 0.05)]
    probs = np.r_[positives, negatives]
    truth = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    # 0.1 already reaches precision 0.9 (100 found, 9 false); 0.225 gives up one positive and all
    # nine false ones.
    assert f1_threshold(probs, truth, target_precision=0.9) == 0.225
    # Precise enough only near the top: the best F1 up there, however little it finds.
    crowded = np.r_[probs, np.full(300, 0.9)]
    crowded_truth = np.r_[truth, np.zeros(300, bool)]
    assert f1_threshold(crowded, crowded_truth, target_precision=0.9) == 0.925
    # Precise enough nowhere (50 negatives above every threshold): the best F1 overall.
    hopeless = np.r_[probs, np.full(50, 0.99)]
    hopeless_truth = np.r_[truth, np.zeros(50, bool)]
    assert f1_threshold(hopeless, hopeless_truth, target_precision=0.9) == 0.225


def test_windows_with_nothing_in_view_are_not_one_anothers_negatives():
    """Two empty scenes look the same to both sensors; pushing them apart would only teach the
    binding that an empty camera frame and an empty radar frame disagree."""
    from models.radar_bind import _info_nce

    eye = torch.eye(6)
    cam = eye.clone()
    cam[1] = cam[0]  # windows 0 and 1: nothing in view, the same to the camera ...
    rad = cam.clone()  # ... and to the radar; every other window is its own
    alike = torch.tensor([True, True, False, False, False, False])
    masked = _info_nce(cam, rad, 0.05, alike)
    unmasked = _info_nce(cam, rad, 0.05)
    assert masked < 1e-3  # each window finds its own and nothing else competes
    assert unmasked > 0.2  # the twin competes with the right answer: about ln 2 for each of the two
    assert torch.isfinite(_info_nce(cam, rad, 0.05, torch.zeros(6, dtype=torch.bool)))
    assert torch.isclose(_info_nce(cam, rad, 0.05, torch.zeros(6, dtype=torch.bool)), unmasked)


def test_a_simulated_window_pools_the_radar_frames_the_node_pools():
    from sensors.sim.assets import load_assets
    from sensors.sim.render import render_radar
    from sensors.sim.world import RigGeometry, sample_scene

    geometry, assets = RigGeometry(), load_assets("train")
    scene = sample_scene(np.random.default_rng(4), 20.0, geometry, classes={"person"}, assets=assets)
    k = PREPROCESS["radar"].stack_frames
    assert k > 1  # the shipped radar reads several frames, and the windows it trains on must hold them
    frames = [render_radar(scene, 20.0 - j * RADAR_FRAME_INTERVAL_S, assets, geometry) for j in reversed(range(k))]
    np.testing.assert_array_equal(radar_window(scene, 20.0, assets, geometry), np.concatenate(frames))
