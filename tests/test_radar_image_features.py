"""Radar points carry where they land in the camera's picture: through the rig calibration, or
the nominal geometry a bundle was trained with; the camera encoder keeps *where* in its embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion_node.config import load_config
from fusion_node.core import FusionCore
from fusion_node.preprocess import RadarPreprocess
from fusion_node.radar_projection import RadarProjection
from fusion_node.rig import load_rig
from sensors.sim.world import RigGeometry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rig_calibration.yaml"


def _points(xyz: np.ndarray) -> np.ndarray:
    """Radar rows (x, y, z, doppler, snr, noise) for the given positions, strongest first."""
    n = len(xyz)
    snr = np.linspace(30.0, 10.0, n)
    return np.column_stack([xyz, np.zeros(n), snr, np.full(n, 60.0)]).astype(np.float32)


def test_the_nominal_projection_is_the_simulators_camera():
    g = RigGeometry()
    pp = RadarPreprocess(image_features=True)  # nominal defaults: the simulator's rig
    rng = np.random.default_rng(0)
    x, y, z = rng.uniform(-5, 5, 50), rng.uniform(2, 20, 50), rng.uniform(-1.3, 1.0, 50)
    u, v = g.project(x, y, z + g.camera_height_m - g.radar_below_camera_m)
    cols = pp.image_columns(np.column_stack([x, y, z]))
    assert cols[:, 0] == pytest.approx(u / g.width_px, abs=1e-4)
    assert cols[:, 1] == pytest.approx(v / g.height_px, abs=1e-4)
    inside = (u >= 0) & (u < g.width_px) & (v >= 0) & (v < g.height_px)
    assert cols[:, 2].astype(bool).tolist() == inside.tolist()


def test_image_columns_in_view_outside_behind_and_padding():
    pp = RadarPreprocess(max_points=8, image_features=True)
    xyz = np.array([[0.0, 5.0, 0.0],     # straight ahead: the middle of the picture
                    [40.0, 5.0, 0.0],    # far to the right: outside, u clipped to 2
                    [0.0, -5.0, 0.0]])   # behind the camera: no image position
    out, mask = pp(_points(xyz))
    assert out.shape == (1, 8, 8) and mask[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    ahead, right, behind = out[0, 0], out[0, 1], out[0, 2]
    assert ahead[5] == pytest.approx(0.5, abs=1e-3) and ahead[7] == 1.0
    assert ahead[6] > 0.5  # the radar sits below the camera: its boresight lands below the centre
    assert right[5] == 2.0 and right[7] == 0.0
    assert behind[5:].tolist() == [0.0, 0.0, 0.0]
    assert not out[0, 3:].any()  # padding stays zero
    # The first five columns are exactly what a bundle without image features sees.
    plain, _ = RadarPreprocess(max_points=8)(_points(xyz))
    assert np.array_equal(out[..., :5], plain)


def test_the_rig_calibration_replaces_the_nominal_geometry():
    proj = RadarProjection.from_rig(load_rig(EXAMPLE), "cam0", "radar0")
    pp = RadarPreprocess(max_points=4, image_features=True)
    xyz = np.array([[1.0, 6.0, 0.5], [-2.0, 9.0, 0.0]])
    calibrated, _ = pp(_points(xyz), proj)
    nominal, _ = pp(_points(xyz))
    px, inside = proj.project(xyz, proj.size)
    assert calibrated[0, :2, 5:7] == pytest.approx(px / np.asarray(proj.size), abs=1e-5)
    assert calibrated[0, :2, 7].astype(bool).tolist() == inside.tolist()
    assert not np.allclose(calibrated[0, :2, 5:7], nominal[0, :2, 5:7], atol=1e-3)


def test_preprocess_settings_round_trip_and_bad_values_are_refused():
    pp = RadarPreprocess(max_points=16, image_features=True, nominal_hfov_deg=90.0, nominal_aspect=4 / 3)
    again = RadarPreprocess.from_dict(pp.to_dict())
    assert again.to_dict() == pp.to_dict() and again.output_shapes == ((1, 16, 8), (1, 16))
    assert "image_features" not in RadarPreprocess().to_dict()  # older manifests read the same
    with pytest.raises(ValueError, match="nominal_hfov_deg"):
        RadarPreprocess(image_features=True, nominal_hfov_deg=200.0)
    with pytest.raises(ValueError, match="image_features"):
        RadarPreprocess(image_features="yes")
    with pytest.raises(ValueError, match="unknown|not one of|nominal_fov"):
        RadarPreprocess.from_dict({"nominal_fov": 60})


def test_the_core_projects_each_radar_through_the_rigs_calibration():
    cfg = load_config(ROOT / "examples" / "rig.yaml")
    rig = load_rig(EXAMPLE)
    core = FusionCore(cfg, None, calibration=rig)
    radars = [s.id for s in cfg.sensors if s.kind == "radar"]
    cams = [s.id for s in cfg.sensors if s.kind == "camera"]
    expected = {r for r in radars if RadarProjection.from_rig(rig, cams[0], r) is not None}
    assert expected == {"radar0"} and set(core.radar_projections) == expected
    assert set(FusionCore(cfg, None).radar_projections) == set()  # no calibration: the nominal geometry


def test_the_shipped_radar_encoder_reads_the_image_columns_through_the_runtime():
    from fusion_node.cpu_runtime import ModelRuntime
    from fusion_node.manifest import load_manifest

    rt = ModelRuntime(load_manifest(ROOT / "models" / "default" / "manifest.json"), provider="cpu")
    pp = rt.preprocessors["radar"]
    if not pp.image_features:
        pytest.skip("the shipped bundle's radar does not read image coordinates")
    proj = RadarProjection.from_rig(load_rig(EXAMPLE), "cam0", "radar0")
    pts = _points(np.array([[1.0, 6.0, 0.5], [-2.0, 9.0, 0.0], [0.5, 4.0, -0.5]]))
    nominal = rt.encode("radar", *rt.preprocess("radar", pts))
    calibrated = rt.encode("radar", *rt.preprocess("radar", pts, projection=proj))
    assert nominal.shape == calibrated.shape == (1, rt.manifest.embedding_dim)
    assert not np.allclose(nominal, calibrated, atol=1e-4)


def test_a_spatial_camera_encoder_keeps_where_in_a_part_of_its_own():
    torch = pytest.importorskip("torch")
    from models.architectures import CameraEncoder
    from models.camera_distill import CameraStudent

    torch.manual_seed(0)
    enc = CameraEncoder(32, blocks=((16, 2), (32, 2), (32, 2), (32, 1)), spatial_dim=8, spatial_channels=4,
                        spatial_grid=3).eval()
    assert enc.semantic_dim == 24 and enc.spatial_proj.in_features == 4 * 9
    # Feed feature maps directly: the same content in another cell of the 6 x 6 map. The squeeze
    # passes the first four channels through, so nothing depends on the random initialisation.
    enc.features = torch.nn.Identity()
    with torch.no_grad():
        enc.squeeze[0].weight.copy_(torch.eye(4, 32)[:, :, None, None])
        enc.squeeze[0].bias.zero_()
    left, right = torch.zeros(1, 32, 6, 6), torch.zeros(1, 32, 6, 6)
    left[..., 2, 0] = 1.0
    right[..., 2, 5] = 1.0
    with torch.no_grad():
        e_left, e_right = enc(left), enc(right)
    assert torch.linalg.norm(e_left).item() == pytest.approx(1.0, abs=1e-5)
    # Each part is half of the unit length.
    assert torch.linalg.norm(e_left[0, :24]).item() == pytest.approx(0.5 ** 0.5, abs=1e-5)
    # The global part cannot tell where the content is; the spatial part can.
    assert torch.allclose(e_left[0, :24], e_right[0, :24], atol=1e-6)
    assert float(torch.linalg.norm(e_left[0, 24:] - e_right[0, 24:])) > 1e-2

    student = CameraStudent({"embed_dim": 32, "blocks": ((16, 2), (32, 2), (32, 2), (32, 1)), "spatial_dim": 8,
                             "spatial_channels": 4, "spatial_grid": 3}).eval()
    with torch.no_grad():
        emb, logits, grid, _ = student(torch.rand(1, 3, 96, 96))
        full = student.full_classifier()
        assert torch.allclose(full(emb), logits, atol=1e-6)  # the head's copy reads what, never where
        assert not full.weight[:, 24:].any()
        assert grid.shape == (1, 3, 4, 4)
