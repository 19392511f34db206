"""Sensor models for the synthetic nuScenes writer: the camera rig, a flat-shaded box
renderer (textured road and sky behind, painter's order by depth) and a ray-cast LIDAR.

Both sensors see the same geometry through the same calibration the database stores, so a
camera-only BEV model can learn depth and position from the images, and the projected
LIDAR points (BEVDepth's depth labels) land on the objects they belong to.
The ground is the plane z = 0 of the ego frame (ego poses are flat: z = 0, pure yaw).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from workloads.datasets.nuscenes_geometry import rot_z

# nuScenes's rig (values close to the v1.0 calibration): ego-frame translation, yaw of
# the optical axis (deg, CCW from ego x) and pinhole fx, cx, cy at 1600x900.
CAMERA_RIG: dict[str, tuple[tuple[float, float, float], float, tuple[float, float, float]]] = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.0, (1266.4, 816.3, 491.5)),
    "CAM_FRONT_RIGHT": ((1.55, -0.493, 1.50), -55.0, (1260.8, 808.0, 495.3)),
    "CAM_FRONT_LEFT": ((1.52, 0.495, 1.51), 55.0, (1272.6, 826.6, 479.8)),
    "CAM_BACK": ((0.028, 0.003, 1.58), 180.0, (809.2, 829.2, 481.8)),
    "CAM_BACK_LEFT": ((1.036, 0.485, 1.59), 110.0, (1256.7, 817.8, 452.0)),
    "CAM_BACK_RIGHT": ((1.028, -0.484, 1.49), -110.0, (1259.5, 807.3, 501.2)),
}
LIDAR_TRANSLATION = (0.986, 0.0, 1.84)
LIDAR_YAW = -np.pi / 2  # nuScenes's LIDAR_TOP x axis points to the ego's right
# Velodyne HDL-32E: 32 rings from -30.67 to +10.67 degrees elevation.
LIDAR_ELEVATIONS = np.deg2rad(np.linspace(-30.67, 10.67, 32))
LIDAR_MAX_RANGE = 70.0
# Optical frame (x right, y down, z forward) -> ego frame (x forward, y left, z up).
_CAM_AXES = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
_SKY_TOP, _HORIZON = np.array([95.0, 140.0, 205.0]), np.array([205.0, 212.0, 222.0])
_LIGHT = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])  # sun, road frame

# Box corners (x: length, y: width, z: height) and the faces a camera can see (no bottom).
_CORNERS = np.array([[1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1],
                     [1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1]], dtype=np.float64) / 2
_FACES = ((0, 1, 5, 4), (2, 3, 7, 6), (3, 0, 4, 7), (1, 2, 6, 5), (4, 5, 6, 7))
_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=np.float64)
# Heading cue: windscreen-like front, tail-light-like back (orientation error is over 2*pi).
_FACE_TINT = {0: (np.array([225.0, 235.0, 255.0]), 0.45), 1: (np.array([170.0, 20.0, 20.0]), 0.35)}


def camera_calibration(name: str, image_size: tuple[int, int], rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(translation, cam->ego rotation matrix, 3x3 intrinsics) for one scene's rig, with a
    fraction of a degree of mounting jitter like nuScenes's per-log calibrations."""
    trans, yaw_deg, (fx, cx, cy) = CAMERA_RIG[name]
    jitter = np.deg2rad(rng.normal(0.0, 0.3, size=3))
    cy_, sy_ = np.cos(jitter[1]), np.sin(jitter[1])
    cx_, sx_ = np.cos(jitter[2]), np.sin(jitter[2])
    pitch = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
    roll = np.array([[1, 0, 0], [0, cx_, -sx_], [0, sx_, cx_]])
    rot = rot_z(np.deg2rad(yaw_deg) + jitter[0]) @ pitch @ roll @ _CAM_AXES
    w, h = image_size
    sx, sy = w / 1600.0, h / 900.0
    k = np.array([[fx * sx, 0.0, cx * sx], [0.0, fx * sy, cy * sy], [0.0, 0.0, 1.0]])
    return np.asarray(trans, dtype=np.float64), rot, k


@dataclasses.dataclass
class Boxes:
    """Boxes in the ego frame of one sample: centres (M,3), sizes w,l,h (M,3), yaw (M,),
    RGB colours (M,3) and LIDAR intensities (M,)."""

    centers: np.ndarray
    sizes: np.ndarray
    yaws: np.ndarray
    colors: np.ndarray
    intensity: np.ndarray


class CameraView:
    """One camera of one scene: the per-pixel ground hits are fixed (flat ground, fixed
    mount), so only the road texture lookup changes from sample to sample."""

    def __init__(self, trans: np.ndarray, rot: np.ndarray, k: np.ndarray, size: tuple[int, int]):
        self.trans, self.rot, self.k, self.size = trans, rot, k, size
        w, h = size
        u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        rays = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
        rays = rays.reshape(-1, 3) @ rot.T
        t = np.where(rays[:, 2] < -1e-6, -trans[2] / np.minimum(rays[:, 2], -1e-6), np.inf)
        dist = t * np.linalg.norm(rays, axis=1)
        self.ground = dist < 400.0
        # float32 halves the per-sample texture cost; the texture needs no more precision.
        self.ground_xy = (trans[:2] + t[self.ground, None] * rays[self.ground, :2]).astype(np.float32)
        self.ground_fog = (1.0 - np.exp(-dist[self.ground] / 140.0))[:, None].astype(np.float32)
        elev = np.clip(rays[:, 2] / np.linalg.norm(rays, axis=1), 0.0, 1.0)[:, None]
        self.sky = (_HORIZON + (_SKY_TOP - _HORIZON) * np.sqrt(elev)).astype(np.float32)

    def render(self, ego2road: np.ndarray, boxes: Boxes) -> Image.Image:
        w, h = self.size
        img = self.sky.copy()
        a = ego2road.astype(np.float32)
        sd = self.ground_xy @ a[:2, :2].T + a[:2, 2]
        ground = road_colour(sd[:, 0], sd[:, 1])
        img[self.ground] = ground + (_HORIZON.astype(np.float32) - ground) * self.ground_fog
        canvas = Image.fromarray(img.reshape(h, w, 3).clip(0, 255).astype(np.uint8))
        self._draw_boxes(ImageDraw.Draw(canvas), ego2road, boxes)
        return canvas

    def _draw_boxes(self, draw: ImageDraw.ImageDraw, ego2road: np.ndarray, boxes: Boxes,
                    near: float = 0.3) -> None:
        light = ego2road[:2, :2].T @ _LIGHT[:2]
        light = np.array([light[0], light[1], _LIGHT[2]])
        c, s = np.cos(boxes.yaws), np.sin(boxes.yaws)
        rots = np.zeros((len(c), 3, 3))
        rots[:, 0, 0], rots[:, 0, 1], rots[:, 1, 0], rots[:, 1, 1], rots[:, 2, 2] = c, -s, s, c, 1.0
        dims = boxes.sizes[:, [1, 0, 2]]  # local x is the length
        corners = np.einsum("mij,mkj->mki", rots, _CORNERS[None] * dims[:, None]) + boxes.centers[:, None]
        cam = (corners - self.trans) @ self.rot  # (M, 8, 3) camera frame
        normals_ego = np.einsum("mij,fj->mfi", rots, _NORMALS)  # (M, 5, 3)
        face_pts = cam[:, np.array(_FACES)]  # (M, 5, 4, 3)
        visible = np.einsum("mfj,mfj->mf", normals_ego @ self.rot, face_pts.mean(2)) < 0
        z = cam[..., 2]
        uv = (cam @ self.k.T)[..., :2] / np.maximum(z, 1e-6)[..., None]
        dist = np.linalg.norm(boxes.centers - self.trans, axis=1)
        shade = 0.45 + 0.55 * np.clip(normals_ego @ light, 0.0, None)  # (M, 5)
        fog = (1.0 - np.exp(-dist / 140.0))[:, None, None]
        colours = boxes.colors[:, None] * shade[..., None]
        for f, (tint, a) in _FACE_TINT.items():
            colours[:, f] = colours[:, f] * (1 - a) + tint * a
        colours = (colours + (_HORIZON - colours) * fog).clip(0, 255).astype(int)
        w, h = self.size
        front = z >= near
        in_view = front.any(1) & (dist < 150.0)
        for i in np.argsort(-dist):  # far first: painter's order
            if not in_view[i]:
                continue
            if front[i].all():  # the common case: no clipping, reject off-image boxes early
                u, v = uv[i, :, 0], uv[i, :, 1]
                if u.max() < 0 or v.max() < 0 or u.min() > w or v.min() > h:
                    continue
            for f in np.flatnonzero(visible[i]):
                face = _FACES[f]
                if front[i, list(face)].all():
                    poly = [(float(uv[i, k, 0]), float(uv[i, k, 1])) for k in face]
                else:
                    poly = self._project(face_pts[i, f], near)
                    if poly is None:
                        continue
                draw.polygon(poly, fill=tuple(colours[i, f]))

    def _project(self, pts: np.ndarray, near: float) -> list[tuple[float, float]] | None:
        """Clip a 3D polygon (camera frame) at z = near, then project it to pixels."""
        out = []
        for a, b in zip(pts, np.roll(pts, -1, axis=0), strict=True):
            if a[2] >= near:
                out.append(a)
            if (a[2] >= near) != (b[2] >= near):
                out.append(a + (b - a) * (near - a[2]) / (b[2] - a[2]))
        if len(out) < 3:
            return None
        p = np.array(out) @ self.k.T
        uv = p[:, :2] / p[:, 2:3]
        w, h = self.size
        if uv[:, 0].max() < 0 or uv[:, 1].max() < 0 or uv[:, 0].min() > w or uv[:, 1].min() > h:
            return None
        return [(float(x), float(y)) for x, y in uv]


def road_colour(s: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Ground texture in road coordinates (s along the road, d to the left): asphalt with
    lane markings, a red bike lane, a tiled sidewalk, grass; per-cell noise everywhere, so
    perspective (and hence depth) is visible in every camera."""
    ad = np.abs(d)
    col = np.empty((s.shape[0], 3), dtype=np.float32)
    col[:] = (74.0, 74.0, 78.0)
    bike = (ad >= 9.2) & (ad < 10.8)
    walk = (ad >= 10.8) & (ad < 15.0)
    grass = ad >= 15.0
    col[bike] = (120.0, 72.0, 62.0)
    col[walk] = (158.0, 156.0, 150.0)
    col[grass] = (72.0, 112.0, 60.0)
    dashed = (np.abs(ad - 1.8) < 0.08) & (np.mod(s, 6.0) < 3.0) & (d < 0)
    centre = (np.abs(d - 1.8) < 0.08) | (np.abs(d - 1.95) < 0.08)
    edge = np.abs(ad - 5.4) < 0.1
    col[dashed | edge] = (225.0, 225.0, 220.0)
    col[centre] = (220.0, 180.0, 40.0)
    tiles = walk & ((np.mod(s, 1.5) < 0.06) | (np.mod(d, 1.5) < 0.06))
    col[tiles] *= 0.75
    cell = np.floor(s / 0.35).astype(np.float64) * 12.9898 + np.floor(d / 0.35) * 78.233
    noise = np.modf(np.sin(cell) * 43758.5453)[0].astype(np.float32)
    return col * (0.85 + 0.3 * np.abs(noise))[:, None]


class Lidar:
    """LIDAR_TOP ray caster; ground hits are fixed per scene (flat ground). Rays are stored
    azimuth-major so each box only tests the columns and rings it can cover."""

    def __init__(self, points_per_ring: int):
        self.n_az = points_per_ring
        az = np.linspace(-np.pi, np.pi, points_per_ring, endpoint=False)
        az, el = np.meshgrid(az, LIDAR_ELEVATIONS, indexing="ij")
        self.ring = np.tile(np.arange(32, dtype=np.float32), points_per_ring)
        self.dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
        self.origin = np.asarray(LIDAR_TRANSLATION)
        dz = self.dirs[:, 2]
        self.t_ground = np.where(dz < -1e-6, -self.origin[2] / np.minimum(dz, -1e-6), np.inf)

    def _candidate_rays(self, center: np.ndarray, size: np.ndarray, yaw: float) -> np.ndarray | None:
        """Flat indices of the rays whose azimuth/elevation window covers the box."""
        corners = (_CORNERS * [size[1], size[0], size[2]]) @ rot_z(yaw).T + center - self.origin
        rel = corners[:, :2]
        if np.linalg.norm(center[:2] - self.origin[:2]) < 0.5 * np.linalg.norm(size[:2]) + 0.5:
            return None  # the sensor is (almost) inside the footprint: test every ray
        c0 = np.arctan2(center[1] - self.origin[1], center[0] - self.origin[0])
        da = np.angle(np.exp(1j * (np.arctan2(rel[:, 1], rel[:, 0]) - c0)))
        step = 2 * np.pi / self.n_az
        cols = np.arange(int(np.floor((c0 + da.min() + np.pi) / step)) - 1,
                         int(np.ceil((c0 + da.max() + np.pi) / step)) + 2) % self.n_az
        el = np.arctan2(corners[:, 2], np.linalg.norm(rel, axis=1))
        rings = np.flatnonzero((LIDAR_ELEVATIONS >= el.min() - 0.03) & (LIDAR_ELEVATIONS <= el.max() + 0.03))
        return (cols[:, None] * 32 + rings[None, :]).ravel()

    def scan(self, boxes: Boxes, ego2road: np.ndarray, rng: np.random.Generator
             ) -> tuple[np.ndarray, np.ndarray]:
        """Points (N, 5: x, y, z, intensity, ring) in the LIDAR frame and hits per box."""
        t_best = self.t_ground.copy()
        hit_box = np.full(t_best.shape, -1)
        near = np.linalg.norm(boxes.centers[:, :2] - self.origin[:2], axis=1) < LIDAR_MAX_RANGE + 15
        for i in np.flatnonzero(near):
            idx = self._candidate_rays(boxes.centers[i], boxes.sizes[i], boxes.yaws[i])
            idx = np.arange(len(t_best)) if idx is None else idx
            t = _ray_box(self.origin, self.dirs[idx], boxes.centers[i], boxes.sizes[i], boxes.yaws[i])
            closer = t < t_best[idx]
            t_best[idx[closer]] = t[closer]
            hit_box[idx[closer]] = i
        keep = t_best < LIDAR_MAX_RANGE
        t_best, hit_box = t_best[keep], hit_box[keep]
        pts = self.origin + self.dirs[keep] * t_best[:, None]
        pts += rng.normal(0.0, 0.015, size=pts.shape)  # range noise of a real sensor
        on_ground = hit_box < 0
        sd = pts[on_ground, :2] @ ego2road[:2, :2].T + ego2road[:2, 2]
        intensity = np.empty(len(pts))
        intensity[on_ground] = road_colour(sd[:, 0], sd[:, 1]).mean(1) / 8.0
        intensity[~on_ground] = boxes.intensity[hit_box[~on_ground]]
        local = (pts - self.origin) @ rot_z(LIDAR_YAW)  # ego -> LIDAR frame
        counts = np.bincount(hit_box[~on_ground], minlength=len(boxes.centers))
        cloud = np.concatenate([local, intensity[:, None], self.ring[keep][:, None]], axis=1)
        return cloud.astype(np.float32), counts


def _ray_box(origin: np.ndarray, dirs: np.ndarray, center: np.ndarray, size: np.ndarray,
             yaw: float) -> np.ndarray:
    """Slab-test entry distance of every ray into one yawed box (inf where missed)."""
    c, s = np.cos(yaw), np.sin(yaw)
    o = origin - center
    o_l = np.array([c * o[0] + s * o[1], -s * o[0] + c * o[1], o[2]])
    d_l = np.stack([c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]], 1)
    half = np.array([size[1], size[0], size[2]]) / 2.0  # local x is the length
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(d_l) < 1e-9, 1e-9, d_l)
        t1, t2 = (-half - o_l) * inv, (half - o_l) * inv
    t_near = np.minimum(t1, t2).max(1)
    t_far = np.maximum(t1, t2).min(1)
    return np.where((t_far >= t_near) & (t_near > 0), t_near, np.inf)
