"""Procedural scene sampling: one deterministic street scene per (seed, index).

Spawn probabilities are tuned so that the label statistics resemble BDD100K (paper, Table 10): road, sky, building and
vegetation dominate; poles, lights, signs and people are small; buses, trains, motorcycles, bicycles and riders
are rare (a per-sequence coin decides whether they exist at all).
"""

from __future__ import annotations

import math

import numpy as np

from poodle.data.classes import CLASS_ID, IGNORE_INDEX
from poodle.data.synthdrive.world import CameraPath, Lighting, RoadMarkings, Scene, SceneBuilder

C = CLASS_ID

# Colour families: (mean RGB, per-channel jitter). A family is chosen per object, then jittered, so every class
# spans several hues and classes overlap in colour (grey cars vs road, beige walls vs sidewalks, ...).
PAINT = [
    ((235, 235, 235), 10),
    ((30, 30, 35), 8),
    ((160, 162, 168), 15),
    ((110, 110, 115), 12),
    ((150, 30, 30), 20),
    ((30, 50, 120), 20),
    ((40, 80, 50), 15),
    ((200, 180, 140), 15),
    ((90, 60, 40), 15),
]
BUILDING = [
    ((170, 150, 125), 20),
    ((150, 80, 60), 20),
    ((120, 120, 125), 20),
    ((210, 205, 195), 15),
    ((110, 90, 75), 15),
    ((180, 170, 120), 20),
    ((90, 100, 115), 15),
]
CLOTHES = [
    ((30, 30, 40), 10),
    ((200, 200, 200), 20),
    ((40, 60, 120), 25),
    ((140, 30, 40), 25),
    ((90, 110, 70), 20),
    ((180, 150, 100), 20),
    ((100, 100, 100), 20),
]
SKIN = [((225, 185, 150), 15), ((170, 120, 90), 15), ((110, 75, 55), 10)]
VEGETATION = [((70, 110, 45), 15), ((50, 85, 40), 12), ((100, 120, 50), 15), ((130, 105, 50), 15)]
TERRAIN = [((120, 135, 75), 15), ((145, 130, 95), 15), ((100, 115, 65), 12)]
SIGN = [((40, 70, 160), 15), ((190, 40, 40), 15), ((230, 200, 40), 15), ((225, 225, 225), 10), ((40, 120, 60), 15)]


def _color(rng: np.random.Generator, families) -> tuple[float, float, float]:
    mean, jitter = families[rng.integers(len(families))]
    noise = rng.normal(0.0, jitter, 3)
    return tuple(min(max(float(m + e), 5.0), 250.0) for m, e in zip(mean, noise))


def _grey(rng: np.random.Generator, lo: float, hi: float, tint: float = 6.0) -> tuple[float, float, float]:
    g = rng.uniform(lo, hi)
    return tuple(min(max(float(g + e), 5.0), 250.0) for e in rng.normal(0.0, tint, 3))


def sample_lighting(rng: np.random.Generator) -> Lighting:
    weather = rng.choice(["clear", "overcast", "fog", "dusk"], p=[0.55, 0.2, 0.1, 0.15])
    brightness = rng.uniform(0.75, 1.15)
    tint = 1.0 + rng.normal(0.0, 0.05, 3)
    if weather == "clear":
        top = (rng.uniform(50, 90), rng.uniform(100, 150), rng.uniform(170, 230))
        light = Lighting(
            sky_top=top,
            sky_horizon=(185.0, 205.0, 230.0),
            fog_distance=rng.uniform(300, 800),
            fog_max=0.5,
            cloud_amount=rng.uniform(0.1, 0.6),
        )
    elif weather == "overcast":
        g = rng.uniform(150, 200)
        brightness *= 0.85
        light = Lighting(
            sky_top=(g - 15, g - 10, g),
            sky_horizon=(g + 20, g + 20, g + 25),
            fog_color=(g, g, g + 5),
            fog_distance=rng.uniform(150, 400),
            fog_max=0.7,
            cloud_amount=0.8,
            cloud_color=(g - 30, g - 30, g - 25),
        )
    elif weather == "fog":
        g = rng.uniform(170, 215)
        light = Lighting(
            sky_top=(g, g, g + 5),
            sky_horizon=(g, g, g + 5),
            fog_color=(g, g, g + 5),
            fog_distance=rng.uniform(40, 100),
            fog_max=0.92,
            cloud_amount=0.0,
        )
    else:  # dusk: dark, warm, orange horizon
        brightness *= 0.6
        tint = tint * np.array([1.15, 0.95, 0.8])
        light = Lighting(
            sky_top=(40.0, 50.0, 95.0),
            sky_horizon=(235.0, 150.0, 90.0),
            fog_color=(150, 110, 100),
            fog_distance=rng.uniform(300, 700),
            fog_max=0.5,
            cloud_amount=rng.uniform(0.2, 0.6),
            cloud_color=(200.0, 120.0, 100.0),
        )
    light.gain = tuple(float(g) for g in brightness * tint)
    return light


def _person(b: SceneBuilder, x: float, z: float, y0: float, velocity, label: int, height: float | None = None):
    """A person (or rider) as legs, torso and head boxes moving together; (x, z) is the centre at time 0."""
    rng = b.rng
    h = height or rng.uniform(1.5, 1.9)
    w = rng.uniform(0.38, 0.52)
    d = 0.3
    legs, torso = (0.47 * h, 0.85 * h) if label == C["person"] else (0.3 * h, 0.8 * h)
    if label == C["person"]:
        b.add_box(
            (x - w / 2.5, y0, z - d / 2),
            (x + w / 2.5, y0 + legs, z + d / 2),
            label,
            _color(rng, CLOTHES),
            "fabric",
            32.0,
            velocity,
        )
    b.add_box(
        (x - w / 2, y0 + legs, z - d / 2),
        (x + w / 2, y0 + torso, z + d / 2),
        label,
        _color(rng, CLOTHES),
        "fabric",
        32.0,
        velocity,
    )
    hw = 0.11
    b.add_box((x - hw, y0 + torso, z - hw), (x + hw, y0 + h, z + hw), label, _color(rng, SKIN), "skin", 32.0, velocity)


def _vehicle(b: SceneBuilder, kind: str, x: float, z: float, vz: float, along_x: bool = False) -> float:
    """Add a vehicle centred at (x, z) at time 0 moving along Z (or X); returns its length."""
    rng = b.rng
    vel = (vz, 0.0, 0.0) if along_x else (0.0, 0.0, vz)

    def box(cx, cz, w, length, y0, y1, label, color, tile, scale):
        if along_x:
            w, length = length, w
        b.add_box((cx - w / 2, y0, cz - length / 2), (cx + w / 2, y1, cz + length / 2), label, color, tile, scale, vel)

    if kind == "car":
        w, length, h = rng.uniform(1.7, 1.95), rng.uniform(3.9, 4.9), rng.uniform(1.35, 1.65)
        body = 0.6 * h
        box(x, z, w, length, 0.12, body, C["car"], _color(rng, PAINT), "paint", 32.0)
        box(
            x,
            z - 0.1 * length * (1 if vz >= 0 else -1),
            w * 0.85,
            length * 0.55,
            body,
            h,
            C["car"],
            _color(rng, PAINT[:4]) if rng.random() < 0.3 else (40.0, 45.0, 55.0),
            "glass",
            32.0,
        )
    elif kind == "truck":
        w, length, h = rng.uniform(2.2, 2.5), rng.uniform(6.0, 9.0), rng.uniform(2.8, 3.6)
        color = _color(rng, PAINT)
        box(x, z, w, length, 0.3, h, C["truck"], color, "paint", 64.0 / h)
    elif kind == "bus":
        w, length, h = 2.5, rng.uniform(10.0, 12.5), rng.uniform(3.0, 3.4)
        color = _color(rng, [((220, 190, 40), 15), ((190, 40, 40), 15), ((40, 80, 170), 15), ((225, 225, 225), 10)])
        box(x, z, w, length, 0.25, h, C["bus"], color, "bus", 64.0 / h)
    elif kind in ("motorcycle", "bicycle"):
        moto = kind == "motorcycle"
        w, length, h = (0.75, 2.1, 1.1) if moto else (0.5, 1.7, 1.0)
        color = _color(rng, PAINT) if moto else _color(rng, CLOTHES)
        box(x, z, w, length, 0.0, h, C[kind], color, "metal", 48.0)
        if abs(vz) > 0 or moto:
            _person(b, x, z, 0.35 if moto else 0.25, vel, C["rider"])
    else:
        raise ValueError(kind)
    return length


def _facade_segments(rng, z_lo, z_hi, streets, kinds, weights, make):
    """Fill [z_lo, z_hi] with random segments of the given kinds, leaving gaps at cross streets."""
    segs = []
    z = z_lo
    cuts = sorted(streets)
    cum = np.cumsum(weights)
    while z < z_hi:
        street = next(((a, c) for a, c in cuts if a <= z < c), None)
        if street:
            segs.append((z, street[1], -1, 0.0, 0.0, 0.0, 0.0))
            z = street[1]
            continue
        kind = kinds[min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), len(kinds) - 1)]
        length, seg = make(kind)
        end = min(z + length, z_hi)
        nxt = min((a for a, _ in cuts if a > z), default=math.inf)
        end = min(end, nxt)
        segs.append((z, end, *seg))
        z = end
    return segs


def build_scene(seed: int, index: int, agents: bool = True, duration: float = 12.0) -> Scene:
    """Sample the scene of sequence `index` for `seed`; independent of resolution and frame rate."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 0x5D1]))
    area = rng.choice(["urban", "suburban", "rural"], p=[0.5, 0.32, 0.18])
    stopped = area != "rural" and rng.random() < 0.2
    speed = 0.0 if stopped else rng.uniform(5.0, 14.0)
    lane_w = rng.uniform(3.0, 3.6)
    n_fwd = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])) if area != "rural" else 1
    n_onc = int(rng.choice([1, 2], p=[0.6, 0.4])) if area != "rural" else 1
    ego_lane = int(rng.integers(n_fwd))
    camera = CameraPath(
        height=rng.uniform(1.25, 1.6),
        x0=(ego_lane + 0.5) * lane_w + rng.normal(0, 0.15),
        z0=0.0,
        speed=speed,
        speed_wobble=0.0 if stopped else rng.uniform(0.0, 0.15),
        wobble_freq=rng.uniform(0.1, 0.4),
        sway_amp=0.0 if stopped else rng.uniform(0.0, 0.2),
        sway_freq=rng.uniform(0.1, 0.3),
        bounce_amp=0.0 if stopped else rng.uniform(0.0, 0.02),
        bounce_freq=rng.uniform(1.0, 2.5),
        yaw0=rng.uniform(-0.03, 0.03),
        yaw_amp=rng.uniform(0.0, 0.004) if stopped else rng.uniform(0.002, 0.02),
        yaw_freq=rng.uniform(0.1, 0.4),
        pitch0=rng.uniform(-0.07, 0.0),
        pitch_amp=rng.uniform(0.0, 0.002) if stopped else rng.uniform(0.001, 0.008),
        pitch_freq=rng.uniform(0.8, 2.5),
        phase=tuple(float(p) for p in rng.uniform(0, 2 * math.pi, 5)),
    )
    b = SceneBuilder(rng, camera, sample_lighting(rng))

    # --- ground: terrain | sidewalk | road | sidewalk | terrain ---------------------------------------------
    park_l = 2.3 if area == "urban" and rng.random() < 0.3 else 0.0
    park_r = 2.3 if area != "rural" and rng.random() < 0.5 else 0.0
    road_l, road_r = -(n_onc * lane_w + park_l), n_fwd * lane_w + park_r
    sidewalk = (rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0)) if area != "rural" else (0.0, 0.0)
    sw_l, sw_r = road_l - sidewalk[0], road_r + sidewalk[1]
    terrain_w = {"urban": (0.0, 2.0), "suburban": (1.0, 6.0), "rural": (3.0, 15.0)}[area]
    terrain = [rng.uniform(*terrain_w) * (rng.random() < 0.6) for _ in range(2)]
    has_train = rng.random() < 0.06
    train_side = int(rng.integers(2))
    if has_train:
        terrain[train_side] = max(terrain[train_side], 8.0)
    road = b.add_object(C["road"], _grey(rng, 85, 135, 5), "asphalt", 24.0, rng.uniform(0, 50, 3))
    walk = b.add_object(C["sidewalk"], _grey(rng, 135, 190, 8), "paving", 16.0, rng.uniform(0, 50, 3))
    grass = b.add_object(C["terrain"], _color(rng, TERRAIN), "grass", 14.0, rng.uniform(0, 50, 3))
    b.set_ground([sw_l, road_l, road_r, sw_r], [grass, walk, road, walk, grass], road)
    yellow = rng.random() < 0.5
    b.markings = RoadMarkings(
        dashed_x=tuple([k * lane_w for k in range(1, n_fwd)] + [-k * lane_w for k in range(1, n_onc)]),
        solid_x=(0.0, n_fwd * lane_w, -n_onc * lane_w),
        centre_yellow=yellow,
    )

    # --- extent of the world along Z, cross streets --------------------------------------------------------
    z_end = camera.z0 + speed * duration * 1.2
    z_lo, z_hi = -60.0, z_end + 260.0
    streets: list[tuple[float, float]] = []
    if stopped:
        first = rng.uniform(12.0, 22.0)
        streets.append((first, first + rng.uniform(10.0, 16.0)))
    if area != "rural":
        z = (streets[-1][1] if streets else 0.0) + rng.uniform(30.0, 150.0)
        while z < z_hi - 20:
            streets.append((z, z + rng.uniform(10.0, 16.0)))
            z = streets[-1][1] + rng.uniform(50.0, 160.0)
    b.cross_streets = streets

    # --- facades: near layer (fence / wall / hedge) and far layer (building / vegetation) ------------------
    has_wall = rng.random() < 0.3
    near_w = {
        "urban": [0.45, 0.25, 0.3 if has_wall else 0.0, 0.15],
        "suburban": [0.35, 0.3, 0.2 if has_wall else 0.0, 0.3],
        "rural": [0.6, 0.3, 0.1 if has_wall else 0.0, 0.1],
    }[area]
    far_w = {"urban": [0.08, 0.77, 0.15], "suburban": [0.12, 0.48, 0.4], "rural": [0.3, 0.08, 0.62]}[area]
    b_height = {"urban": (8.0, 35.0), "suburban": (5.0, 12.0), "rural": (4.0, 8.0)}[area]

    def near(kind):
        if kind == "gap":
            return rng.uniform(5, 30), (-1, 0.0, 0.0, 0.0, 0.0)
        if kind == "fence":
            oid = b.add_object(
                C["fence"],
                _color(rng, [((120, 90, 60), 15), ((110, 115, 120), 15), ((60, 90, 60), 10)]),
                "fence",
                16.0,
                rng.uniform(0, 50, 3),
            )
            return rng.uniform(8, 40), (oid, rng.uniform(0.9, 2.0), 0.0, 0.0, 0.0)
        if kind == "wall":
            oid = b.add_object(C["wall"], _color(rng, BUILDING), "concrete", 16.0, rng.uniform(0, 50, 3))
            return rng.uniform(8, 40), (oid, rng.uniform(0.8, 3.5), 0.0, 0.0, 0.0)
        oid = b.add_object(C["vegetation"], _color(rng, VEGETATION), "foliage", 10.0, rng.uniform(0, 50, 3))
        return rng.uniform(5, 30), (oid, rng.uniform(0.8, 2.2), 0.15, rng.uniform(1, 3), rng.uniform(0, 6))

    def far(kind):
        if kind == "gap":
            return rng.uniform(5, 25), (-1, 0.0, 0.0, 0.0, 0.0)
        if kind == "building":
            tile = ["facade_grid", "facade_bands", "facade_shop"][rng.integers(3)]
            oid = b.add_object(
                C["building"], _color(rng, BUILDING), tile, 16.0 / rng.uniform(2.6, 3.6), (0.0, 0.0, rng.uniform(0, 50))
            )
            return rng.uniform(8, 35), (oid, rng.uniform(*b_height), 0.0, 0.0, 0.0)
        oid = b.add_object(C["vegetation"], _color(rng, VEGETATION), "foliage", 10.0, rng.uniform(0, 50, 3))
        return rng.uniform(5, 30), (
            oid,
            rng.uniform(4, 14),
            rng.uniform(0.5, 2.5),
            rng.uniform(0.2, 0.8),
            rng.uniform(0, 6),
        )

    far_x = []
    for side, x_sw in ((0, sw_l), (1, sw_r)):
        sign = -1.0 if side == 0 else 1.0
        b.add_facade(
            x_sw + sign * 0.01,
            _facade_segments(rng, z_lo, z_hi, streets, ["gap", "fence", "wall", "hedge"], near_w, near),
        )
        fx = x_sw + sign * (terrain[side] + 0.5 + (rng.uniform(0, 4) if area == "suburban" else 0.0))
        far_x.append(fx)
        b.add_facade(fx, _facade_segments(rng, z_lo, z_hi, streets, ["gap", "building", "vegetation"], far_w, far))

    # --- poles, signs, traffic lights ----------------------------------------------------------------------
    pole_grey = _grey(rng, 90, 160)
    spacing = rng.uniform(15.0, 40.0)
    for side, kerb in ((0, road_l - 0.5), (1, road_r + 0.5)):
        z = z_lo + rng.uniform(0, spacing)
        while z < z_hi:
            if any(a - 1 <= z <= c + 1 for a, c in streets):
                z += 3.0
                continue
            h = rng.uniform(4.0, 9.0)
            b.add_box((kerb - 0.08, 0.0, z - 0.08), (kerb + 0.08, h, z + 0.08), C["pole"], pole_grey, "metal", 64.0)
            if rng.random() < 0.35:
                sx = kerb + (0.4 if side == 0 else -0.4)
                sy = rng.uniform(1.9, min(3.2, h - 0.7))
                size = rng.uniform(0.5, 0.8)
                b.add_box(
                    (sx - size / 2, sy, z - 0.12),
                    (sx + size / 2, sy + size, z - 0.1),
                    C["traffic sign"],
                    _color(rng, SIGN),
                    "sign",
                    64.0 / size,
                )
            z += spacing * rng.uniform(0.6, 1.4)
    for z0, _ in streets:
        # Lights at the near corner of each cross street: on both kerb poles, and hanging from an arm.
        for side, kerb in ((0, road_l - 0.6), (1, road_r + 0.6)):
            h = rng.uniform(5.0, 6.5)
            b.add_box((kerb - 0.1, 0.0, z0 - 1.1), (kerb + 0.1, h, z0 - 0.9), C["pole"], pole_grey, "metal", 64.0)
            b.add_box(
                (kerb - 0.17, 2.4, z0 - 1.4),
                (kerb + 0.17, 3.1, z0 - 1.1),
                C["traffic light"],
                _grey(rng, 30, 60),
                "lamp",
                91.0,
            )
            if side == 1 and rng.random() < 0.7:
                b.add_box(
                    (road_l + 2.0, h - 0.4, z0 - 1.05), (kerb, h - 0.2, z0 - 0.95), C["pole"], pole_grey, "metal", 64.0
                )
                for lx in rng.uniform(road_l + 2.5, kerb - 1.0, int(rng.integers(1, 3))):
                    b.add_box(
                        (lx - 0.17, h - 1.1, z0 - 1.3),
                        (lx + 0.17, h - 0.4, z0 - 1.05),
                        C["traffic light"],
                        _grey(rng, 30, 60),
                        "lamp",
                        91.0,
                    )
    # Street furniture that BDD leaves unlabelled (ignore): a few bins.
    for _ in range(int(rng.integers(0, 3)) if area == "urban" else 0):
        x = rng.uniform(road_r + 0.8, sw_r - 0.3) if sidewalk[1] > 1.2 else road_r + 0.6
        z = rng.uniform(z_lo, z_hi)
        b.add_box((x - 0.3, 0.0, z - 0.3), (x + 0.3, 1.0, z + 0.3), IGNORE_INDEX, _grey(rng, 40, 120), "metal", 40.0)

    if not agents:
        return b.build()

    # --- vehicles ------------------------------------------------------------------------------------------
    has_bus = rng.random() < 0.12
    has_moto = rng.random() < 0.07
    has_bike = rng.random() < 0.08
    density = {"urban": 28.0, "suburban": 40.0, "rural": 70.0}[area]  # mean gap between vehicles, m
    specials = (["bus"] * int(rng.integers(1, 3)) * has_bus) + (["motorcycle"] * has_moto)

    def kind():
        if specials and rng.random() < 0.25:
            return specials.pop()
        return "truck" if rng.random() < 0.1 else "car"

    lanes = [((k + 0.5) * lane_w, 1) for k in range(n_fwd)] + [(-(k + 0.5) * lane_w, -1) for k in range(n_onc)]
    for k, (x, direction) in enumerate(lanes):
        if direction > 0:
            is_ego = k == ego_lane
            v = (
                speed * rng.uniform(1.15, 1.4) + rng.uniform(0.5, 2.0)
                if is_ego
                else max(0.0, speed * rng.uniform(0.6, 1.3))
            )
            if stopped:
                v = rng.uniform(0.0, 8.0) if not is_ego else rng.uniform(3.0, 8.0)
            z = camera.z0 + rng.uniform(10.0, 35.0) if is_ego or stopped else z_lo - 40
            if stopped and is_ego:
                z = max(z, streets[0][1] + 4.0)
        else:
            v = -rng.uniform(6.0, 14.0)
            z = z_lo - 40 + rng.uniform(0, 20)
        z_stop = z_hi + (abs(v) * duration if v < 0 else 0.0)
        while z < z_stop:
            length = _vehicle(b, kind(), x, z, v)
            z += length + rng.exponential(density) + 4.0
    if park_r or park_l:
        for x, on in ((road_r - park_r / 2, park_r), (road_l + park_l / 2, park_l)):
            z = z_lo + rng.uniform(0, 10)
            while on and z < z_hi:
                if rng.random() < 0.6 and not any(a - 3 <= z <= c + 3 for a, c in streets):
                    z += _vehicle(b, "car" if rng.random() < 0.92 else "truck", x, z, 0.0)
                z += rng.uniform(1.0, 8.0)
    if has_bike:
        for _ in range(int(rng.integers(1, 3))):
            _vehicle(
                b,
                "bicycle",
                road_r - park_r - 0.5,
                rng.uniform(5.0, 60.0) + speed * duration * 0.3,
                rng.uniform(3.0, 6.0) if rng.random() < 0.8 else 0.0,
            )
    if has_train:
        x = far_x[train_side] + (3.5 if train_side == 0 else -3.5)
        length = rng.uniform(60.0, 120.0)
        v = rng.choice([-1, 1]) * rng.uniform(8.0, 25.0)
        z = rng.uniform(0.0, 120.0) - v * duration * 0.3
        color = _color(rng, [((170, 170, 175), 15), ((170, 40, 40), 15), ((225, 225, 220), 10)])
        b.add_box(
            (x - 1.5, 0.4, z - length / 2),
            (x + 1.5, 4.2, z + length / 2),
            C["train"],
            color,
            "train",
            16.8,
            (0.0, 0.0, v),
        )
    if stopped:
        z0, z1 = streets[0]
        for lane_z, direction in ((z0 + (z1 - z0) / 4, 1), (z0 + 3 * (z1 - z0) / 4, -1)):
            v = direction * rng.uniform(5.0, 12.0)
            x = -80.0 - v * rng.uniform(0, 3)
            while x < 80:
                x += _vehicle(b, "car" if rng.random() < 0.9 else "truck", x, lane_z, v, along_x=True)
                x += rng.exponential(25.0) + 5.0
        for _ in range(int(rng.integers(0, 6))):
            _person(
                b,
                rng.uniform(road_l - 2, road_r + 2),
                z0 - rng.uniform(1.0, 3.0),
                0.0,
                (rng.choice([-1, 1]) * rng.uniform(0.8, 1.5), 0.0, 0.0),
                C["person"],
            )

    # --- pedestrians on the sidewalks ----------------------------------------------------------------------
    per_metre = {"urban": rng.uniform(0.0, 0.05), "suburban": rng.uniform(0.0, 0.015), "rural": 0.002}[area]
    for lo, hi in ((sw_l + 0.4, road_l - 0.6), (road_r + 0.6, sw_r - 0.4)):
        if hi - lo < 0.3:
            continue
        for _ in range(rng.poisson(per_metre * (z_hi - z_lo))):
            vz = rng.choice([-1, 1]) * rng.uniform(0.8, 1.6) if rng.random() < 0.8 else 0.0
            _person(b, rng.uniform(lo, hi), rng.uniform(z_lo, z_hi), 0.0, (0.0, 0.0, vz), C["person"])
    return b.build()
