"""Synthetic nuScenes writer: a real v1.0 database (JSON tables, JPEGs, .pcd.bin sweeps,
map masks) that `nuscenes.NuScenes(version, dataroot)` loads, with learnable structure.

Each scene is a straight road at a random place and heading in the global frame: the ego
drives along its middle lane at 2 Hz key frames; the 10 detection classes sit on lanes,
parking strips, bike lanes and sidewalks, moving at constant velocity (so the devkit's
`box_velocity` recovers it), with nuScenes-like sizes and the attributes the devkit knows.
Buildings stand behind the sidewalks as unannotated clutter. Scene names are v1.0-mini's,
so the devkit's own splits put them in mini_train / mini_val.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from harness.errors import DatasetError, MissingExtra, UsageError
from workloads.datasets.cache import make_temp_folder
from workloads.datasets.nuscenes_geometry import matrix_to_quat, rot_z, yaw_to_quat
from workloads.datasets.nuscenes_render import (
    CAMERA_RIG,
    LIDAR_TRANSLATION,
    LIDAR_YAW,
    Boxes,
    CameraView,
    Lidar,
    camera_calibration,
)

MINI_SCENES = ("scene-0061", "scene-0103", "scene-0553", "scene-0655", "scene-0757",
               "scene-0796", "scene-0916", "scene-1077", "scene-1094", "scene-1100")
MARKER = "synthetic_nuscenes.json"
FORMAT_VERSION = 1  # bump when the generated content changes: caches are then rebuilt
KEYFRAME_US = 500_000  # nuScenes key frames come at 2 Hz
_LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")

# class -> (categories, mean size w/l/h, RGB, LIDAR intensity, placement weight)
CLASS_SPECS: dict[str, tuple[tuple[str, ...], tuple[float, float, float], tuple[int, int, int], float, float]] = {
    "car": (("vehicle.car",), (1.95, 4.62, 1.73), (40, 90, 200), 30.0, 0.30),
    "truck": (("vehicle.truck",), (2.51, 6.93, 2.84), (200, 200, 205), 25.0, 0.08),
    "construction_vehicle": (("vehicle.construction",), (2.73, 6.37, 3.19), (235, 180, 20), 35.0, 0.04),
    "bus": (("vehicle.bus.rigid",), (2.94, 11.19, 3.47), (30, 160, 80), 28.0, 0.05),
    "trailer": (("vehicle.trailer",), (2.90, 12.29, 3.87), (140, 90, 50), 22.0, 0.04),
    "barrier": (("movable_object.barrier",), (2.53, 0.50, 0.98), (235, 235, 235), 60.0, 0.10),
    "motorcycle": (("vehicle.motorcycle",), (0.77, 2.11, 1.47), (160, 30, 160), 32.0, 0.05),
    "bicycle": (("vehicle.bicycle",), (0.60, 1.70, 1.28), (20, 200, 220), 20.0, 0.06),
    "pedestrian": (("human.pedestrian.adult", "human.pedestrian.child",
                    "human.pedestrian.construction_worker", "human.pedestrian.police_officer"),
                   (0.67, 0.73, 1.77), (210, 60, 40), 15.0, 0.18),
    "traffic_cone": (("movable_object.trafficcone",), (0.41, 0.41, 1.07), (255, 110, 0), 70.0, 0.10),
}
ATTRIBUTES = ("vehicle.moving", "vehicle.stopped", "vehicle.parked", "cycle.with_rider",
              "cycle.without_rider", "pedestrian.sitting_lying_down", "pedestrian.standing",
              "pedestrian.moving")
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))
_VEHICLES = ("car", "truck", "construction_vehicle", "bus", "trailer")
_GUARANTEED_ORDER = ("pedestrian", "bicycle", "motorcycle", "traffic_cone", "barrier", "car", "truck",
                     "construction_vehicle", "bus", "trailer")


def write_synthetic_nuscenes(root: Path, *, version: str = "v1.0-mini", seed: int = 0,
                             num_scenes: int = 10, samples_per_scene: int = 10,
                             image_size: tuple[int, int] = (480, 270), objects_per_scene: int = 32,
                             lidar_points_per_ring: int = 720, jpeg_quality: int = 90) -> Path:
    """Write the database to `root` (atomically: a temp folder renamed when complete) and
    return `root`; a completed database with the same parameters is reused as it is."""
    params = dict(format=FORMAT_VERSION, version=version, seed=seed, num_scenes=num_scenes,
                  samples_per_scene=samples_per_scene, image_size=list(image_size),
                  objects_per_scene=objects_per_scene, lidar_points_per_ring=lidar_points_per_ring,
                  jpeg_quality=jpeg_quality)
    root = Path(root)
    if _marker_params(root) == params:
        return root
    if root.exists() and any(root.iterdir()) and _marker_params(root) is None:
        raise DatasetError(f"{root}: exists and has no {MARKER}; refusing to overwrite a folder "
                           "the synthetic writer did not create")
    names = _scene_names(version, num_scenes)
    if samples_per_scene < 2:
        raise UsageError("samples_per_scene must be >= 2 (velocities come from consecutive samples)")
    tmp = make_temp_folder(root.parent, root.name)  # also removes dead writers' leftovers
    try:
        _Writer(tmp, params, names).write()
        (tmp / MARKER).write_text(json.dumps(params, indent=1))
        if _marker_params(root) == params:  # another process finished the same DB meanwhile
            return root
        if root.exists():  # an older synthetic DB with other parameters
            shutil.rmtree(root)
        try:
            tmp.rename(root)
        except OSError:  # another process finished first; keep its copy if it matches
            if _marker_params(root) != params:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _marker_params(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _scene_names(version: str, num_scenes: int) -> list[str]:
    if version == "v1.0-mini":
        if not 1 <= num_scenes <= len(MINI_SCENES):
            raise UsageError(f"v1.0-mini has 1..{len(MINI_SCENES)} scenes, not {num_scenes}")
        return list(MINI_SCENES[:num_scenes])
    if version == "v1.0-trainval":  # every 5th scene from the devkit's val list, the rest train
        try:  # lazy: the mini writer needs no devkit
            from nuscenes.utils import splits
        except ImportError as e:
            raise MissingExtra("workload bevdepth needs nuscenes-devkit: "
                               "pip install 'perception-harness[bevdepth]'") from e
        train, val = iter(splits.train), iter(splits.val)
        return [next(val) if i % 5 == 1 else next(train) for i in range(num_scenes)]
    raise UsageError(f"synthetic nuScenes supports v1.0-mini and v1.0-trainval, not {version}")


def _token(*parts: object) -> str:
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


@dataclasses.dataclass
class _Object:
    cls: str
    category: str
    s_mid: float  # position along the road at mid-scene
    d: float  # lateral position (left positive)
    yaw: float  # heading relative to the road
    speed: float
    size: np.ndarray
    color: np.ndarray
    attribute: str  # "" for barriers and cones


class _Writer:
    def __init__(self, out: Path, params: dict, names: list[str]):
        self.out, self.p, self.names = out, params, names
        self.version = params["version"]
        self.t: dict[str, list[dict]] = {k: [] for k in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor",
            "ego_pose", "log", "scene", "sample", "sample_data", "sample_annotation", "map")}
        self.lidar = Lidar(params["lidar_points_per_ring"])
        self._sd_index: dict[str, int] = {}  # sample_data token -> row, to link prev/next

    def write(self) -> None:
        seed = self.p["seed"]
        cats = sorted({c for spec in CLASS_SPECS.values() for c in spec[0]})
        self.t["category"] = [dict(token=_token("cat", c), name=c, description=f"synthetic {c}") for c in cats]
        self.t["attribute"] = [dict(token=_token("attr", a), name=a, description=a) for a in ATTRIBUTES]
        self.t["visibility"] = [dict(token=t, level=lv, description=f"visibility {lv}") for t, lv in _VISIBILITY]
        channels = (*CAMERA_RIG, "LIDAR_TOP")
        self.t["sensor"] = [dict(token=_token("sensor", c), channel=c,
                                 modality="lidar" if c == "LIDAR_TOP" else "camera") for c in channels]
        for ch in channels:
            (self.out / "samples" / ch).mkdir(parents=True)
        (self.out / "maps").mkdir()
        for i, loc in enumerate(_LOCATIONS):
            logs = [_token("log", seed, j) for j in range(len(self.names)) if j % len(_LOCATIONS) == i]
            if logs:
                token = _token("map", seed, loc)
                # The devkit opens every map's mask file: a small blank drivable-area PNG.
                Image.new("L", (64, 64), 255).save(self.out / "maps" / f"{token}.png")
                self.t["map"].append(dict(token=token, log_tokens=logs, category="semantic_prior",
                                          filename=f"maps/{token}.png"))
        for j, name in enumerate(self.names):
            self._scene(j, name, np.random.default_rng([seed, j]))
        table_dir = self.out / self.version
        table_dir.mkdir()
        for name, rows in self.t.items():
            (table_dir / f"{name}.json").write_text(json.dumps(rows))

    def _scene(self, j: int, name: str, rng: np.random.Generator) -> None:
        p, seed = self.p, self.p["seed"]
        n = p["samples_per_scene"]
        loc = _LOCATIONS[j % len(_LOCATIONS)]
        date = f"2018-08-{1 + j % 28:02d}-1{j % 10}-{10 + j % 50:02d}-00"
        logfile = f"n015-{date}+0800"
        log_token = _token("log", seed, j)
        self.t["log"].append(dict(token=log_token, logfile=logfile, vehicle="n015", date_captured=date[:10],
                                  location=loc))
        origin = rng.uniform(300.0, 1500.0, size=2)
        heading = rng.uniform(-np.pi, np.pi)
        ego_speed = 0.0 if rng.random() < 0.2 else rng.uniform(3.0, 9.0)
        t_mid = (n - 1) * KEYFRAME_US / 2e6
        objects = _place_objects(rng, p["objects_per_scene"], ego_speed, t_mid)
        buildings = _buildings(rng, ego_speed * 2 * t_mid)
        sensors = self._calibrate(j, rng)
        views = {ch: CameraView(tr, rot, k, tuple(p["image_size"])) for ch, (tr, rot, k, _) in sensors.items()
                 if ch != "LIDAR_TOP"}
        scene_token = _token("scene", seed, j)
        t0 = 1533000000_000000 + j * 3600_000000
        sample_tokens = [_token("sample", seed, j, k) for k in range(n)]
        ann_tokens = [[_token("ann", seed, j, i, k) for k in range(n)] for i in range(len(objects))]
        prev_sd: dict[str, str] = {}
        for k in range(n):
            ts, t = t0 + k * KEYFRAME_US, k * KEYFRAME_US / 1e6
            self.t["sample"].append(dict(token=sample_tokens[k], timestamp=ts, scene_token=scene_token,
                                         prev=sample_tokens[k - 1] if k else "",
                                         next=sample_tokens[k + 1] if k + 1 < n else ""))
            road2global = rot_z(heading)
            ego_xy = origin + road2global[:2, :2] @ [ego_speed * t, 0.0]
            ego2road = np.array([[1.0, 0.0, ego_speed * t], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            s = np.array([o.s_mid + o.speed * np.cos(o.yaw) * (t - t_mid) for o in objects])
            d = np.array([o.d + o.speed * np.sin(o.yaw) * (t - t_mid) for o in objects])
            boxes = _ego_boxes(objects, buildings, s, d, ego_speed * t)
            for ch, view in views.items():
                sd = self._sample_data(j, k, ch, ts, sample_tokens[k], sensors[ch][3], ego_xy, heading,
                                       logfile, prev_sd, "jpg")
                view.render(ego2road, boxes).save(self.out / sd["filename"], quality=p["jpeg_quality"])
            sd = self._sample_data(j, k, "LIDAR_TOP", ts, sample_tokens[k], sensors["LIDAR_TOP"][3], ego_xy,
                                   heading, logfile, prev_sd, "pcd.bin")
            cloud, hits = self.lidar.scan(boxes, ego2road, rng)
            cloud.tofile(self.out / sd["filename"])
            for i, o in enumerate(objects):
                xy = origin + road2global[:2, :2] @ [s[i], d[i]]
                self._annotation(o, ann_tokens[i], k, sample_tokens[k], _token("inst", seed, j, i),
                                 [float(xy[0]), float(xy[1]), float(o.size[2] / 2)], heading, int(hits[i]))
        for i, o in enumerate(objects):
            self.t["instance"].append(dict(token=_token("inst", seed, j, i), category_token=_token("cat", o.category),
                                           nbr_annotations=n, first_annotation_token=ann_tokens[i][0],
                                           last_annotation_token=ann_tokens[i][-1]))
        self.t["scene"].append(dict(token=scene_token, log_token=log_token, nbr_samples=n, name=name,
                                    first_sample_token=sample_tokens[0], last_sample_token=sample_tokens[-1],
                                    description=f"synthetic road, ego {ego_speed:.1f} m/s"))

    def _annotation(self, o: _Object, chain: list[str], k: int, sample_token: str, instance: str,
                    translation: list[float], heading: float, hits: int) -> None:
        self.t["sample_annotation"].append(dict(
            token=chain[k], sample_token=sample_token, instance_token=instance,
            visibility_token="4" if hits >= 8 else "2" if hits > 0 else "1",
            attribute_tokens=[_token("attr", o.attribute)] if o.attribute else [],
            translation=translation, size=[float(v) for v in o.size],
            rotation=[float(v) for v in yaw_to_quat(heading + o.yaw)],
            prev=chain[k - 1] if k else "", next=chain[k + 1] if k + 1 < len(chain) else "",
            num_lidar_pts=hits,
            # Radar sees metal: a share of the LIDAR hits for vehicles, none otherwise.
            num_radar_pts=hits // 8 if o.cls in _VEHICLES + ("motorcycle",) else 0))

    def _calibrate(self, j: int, rng: np.random.Generator) -> dict[str, tuple]:
        out = {}
        for ch in CAMERA_RIG:
            tr, rot, k = camera_calibration(ch, tuple(self.p["image_size"]), rng)
            out[ch] = (tr, rot, k, self._cs_record(j, ch, tr, rot, k.tolist()))
        rot = rot_z(LIDAR_YAW)
        tr = np.asarray(LIDAR_TRANSLATION)
        out["LIDAR_TOP"] = (tr, rot, None, self._cs_record(j, "LIDAR_TOP", tr, rot, []))
        return out

    def _cs_record(self, j: int, ch: str, tr: np.ndarray, rot: np.ndarray, k: list) -> str:
        token = _token("cs", self.p["seed"], j, ch)
        self.t["calibrated_sensor"].append(dict(token=token, sensor_token=_token("sensor", ch),
                                                translation=[float(v) for v in tr],
                                                rotation=[float(v) for v in matrix_to_quat(rot)],
                                                camera_intrinsic=k))
        return token

    def _sample_data(self, j: int, k: int, ch: str, ts: int, sample_token: str, cs_token: str,
                     ego_xy: np.ndarray, heading: float, logfile: str, prev_sd: dict[str, str],
                     ext: str) -> dict:
        seed = self.p["seed"]
        token, pose = _token("sd", seed, j, k, ch), _token("pose", seed, j, k, ch)
        # One ego pose per sample_data, as in nuScenes (here all sensors fire together).
        self.t["ego_pose"].append(dict(token=pose, timestamp=ts, rotation=[float(v) for v in yaw_to_quat(heading)],
                                       translation=[float(ego_xy[0]), float(ego_xy[1]), 0.0]))
        w, h = self.p["image_size"] if ext == "jpg" else (0, 0)
        rec = dict(token=token, sample_token=sample_token, ego_pose_token=pose, calibrated_sensor_token=cs_token,
                   timestamp=ts, fileformat="jpg" if ext == "jpg" else "pcd", is_key_frame=True,
                   height=h, width=w, filename=f"samples/{ch}/{logfile}__{ch}__{ts}.{ext}",
                   prev=prev_sd.get(ch, "") if k else "", next="")
        if k and prev_sd.get(ch):
            self.t["sample_data"][self._sd_index[prev_sd[ch]]]["next"] = token
        self._sd_index[token] = len(self.t["sample_data"])
        self.t["sample_data"].append(rec)
        prev_sd[ch] = token
        return rec


# Where each class may stand: (lateral d, heading, shared speed range or None if static).
def _strips(rng: np.random.Generator, ego_speed: float) -> dict[str, list[tuple[float, float, float]]]:
    same, opposite = rng.uniform(4.0, 10.0), rng.uniform(4.0, 10.0)
    bike_r, bike_l = rng.uniform(2.5, 6.0), rng.uniform(2.5, 6.0)
    lanes = [(0.0, 0.0, ego_speed), (-3.6, 0.0, same), (3.6, np.pi, opposite)]
    parking = [(-7.6, 0.0, 0.0), (7.6, np.pi, 0.0)]
    bikes = [(-10.0, 0.0, bike_r), (10.0, np.pi, bike_l), (-11.3, np.pi / 2, 0.0), (11.3, -np.pi / 2, 0.0)]
    walks = [(sg * dd, yaw, sp) for sg in (-1, 1) for dd, yaw, sp in
             ((12.4, 0.0, rng.uniform(0.8, 1.6)), (13.2, np.pi, rng.uniform(0.8, 1.6)), (14.0, 0.0, 0.0))]
    edge = [(-5.6, np.pi / 2, 0.0), (5.6, np.pi / 2, 0.0)]
    return {"car": lanes + parking, "truck": lanes + parking, "bus": lanes + parking,
            "construction_vehicle": parking + lanes[1:], "trailer": parking, "motorcycle": lanes[1:] + bikes,
            "bicycle": bikes, "pedestrian": walks, "traffic_cone": edge, "barrier": edge}


def _place_objects(rng: np.random.Generator, count: int, ego_speed: float, t_mid: float) -> list[_Object]:
    strips = _strips(rng, ego_speed)
    names = list(CLASS_SPECS)
    weights = np.array([CLASS_SPECS[c][4] for c in names])
    # Every class at least once (the metric needs all 10), placed first and from the
    # sidewalk inwards, so that later parked objects can keep their line of sight clear.
    classes = list(_GUARANTEED_ORDER)
    classes += list(rng.choice(names, size=max(0, count - len(names)), p=weights / weights.sum()))
    occupied: dict[tuple[float, float], list[tuple[float, float]]] = {}
    clear: list[tuple[float, float]] = []  # (s, d) of guaranteed objects to keep in sight
    ego_mid = ego_speed * t_mid
    objects = []
    for n_obj, cls in enumerate(classes):
        cats, mean_size, rgb, _, _ = CLASS_SPECS[cls]
        size = np.asarray(mean_size) * rng.uniform(0.9, 1.1, size=3)
        guaranteed = n_obj < len(names)
        for attempt in range(40):
            d, yaw, speed = strips[cls][rng.integers(len(strips[cls]))]
            # Guaranteed objects pass the ego mid-scene, within every class's eval range.
            s_mid = ego_mid + rng.uniform(-1.0, 1.0) * (14.0 if guaranteed else 48.0)
            extent = abs(np.cos(yaw)) * size[1] + abs(np.sin(yaw)) * size[0]
            if d == 0.0 and abs(s_mid - ego_mid) < 8.0 + extent:
                continue  # keep the ego's own lane clear around the ego
            lo, hi = s_mid - extent / 2 - 1.0, s_mid + extent / 2 + 1.0
            if speed == 0.0 and attempt < 25 and any(  # in the ego's mid-scene sightline to one?
                    d * dg > 0 and abs(d) < abs(dg) and abs(ego_mid + (sg - ego_mid) * d / dg - s_mid)
                    < extent / 2 + 2.5 for sg, dg in clear):
                continue
            if all(hi < a or lo > b for a, b in occupied.get((d, yaw), [])):
                occupied.setdefault((d, yaw), []).append((lo, hi))
                break
        else:
            continue
        if guaranteed and abs(d) > 5.0:
            clear.append((s_mid, d))
        if cls in ("barrier", "traffic_cone", "pedestrian") and speed == 0.0:
            yaw += rng.uniform(-0.4, 0.4)
        color = np.asarray(rgb, dtype=np.float64) * rng.uniform(0.85, 1.1)
        objects.append(_Object(cls, str(rng.choice(cats)) if cls == "pedestrian" else cats[0], s_mid,
                               d + rng.uniform(-0.15, 0.15), yaw, speed, size, color, _attribute(cls, speed)))
    return objects


def _attribute(cls: str, speed: float) -> str:
    """GT attributes as nuScenes annotates them; they agree with BEVDepth's velocity rule."""
    moving = speed > 0.5
    if cls in _VEHICLES:
        return "vehicle.moving" if moving else "vehicle.stopped" if cls == "bus" else "vehicle.parked"
    if cls in ("bicycle", "motorcycle"):
        return "cycle.with_rider" if moving else "cycle.without_rider"
    if cls == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""


def _buildings(rng: np.random.Generator, ego_travel: float) -> list[tuple[float, float, np.ndarray, np.ndarray]]:
    """Unannotated clutter behind the sidewalks: (s, d, size w/l/h, colour)."""
    out = []
    for side in (-1, 1):
        s = -80.0
        while s < ego_travel + 80.0:
            length, depth = rng.uniform(8.0, 22.0), rng.uniform(6.0, 12.0)
            size = np.array([depth, length, rng.uniform(5.0, 22.0)])
            out.append((s + length / 2, side * (16.5 + depth / 2), size, rng.uniform(90, 190, size=3)))
            s += length + rng.uniform(1.0, 8.0)
    return out


def _ego_boxes(objects: list[_Object], buildings: list, s: np.ndarray, d: np.ndarray, ego_s: float) -> Boxes:
    """Objects (first, in order) then buildings, in the ego frame: the ego drives along the
    road's axis, so the ego frame is the road frame shifted by the ego's travel."""
    centers = [[s[i] - ego_s, d[i], o.size[2] / 2] for i, o in enumerate(objects)]
    centers += [[bs - ego_s, bd, size[2] / 2] for bs, bd, size, _ in buildings]
    sizes = [o.size for o in objects] + [b[2] for b in buildings]
    yaws = [o.yaw for o in objects] + [0.0] * len(buildings)
    colors = [o.color for o in objects] + [b[3] for b in buildings]
    intensity = [CLASS_SPECS[o.cls][3] for o in objects] + [40.0] * len(buildings)
    return Boxes(np.array(centers).reshape(-1, 3), np.array(sizes).reshape(-1, 3), np.array(yaws),
                 np.array(colors).reshape(-1, 3), np.array(intensity))
