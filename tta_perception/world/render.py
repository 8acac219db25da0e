"""Geometry pass of the renderer: per-pixel albedo, class id, depth and surface type.

A pinhole camera drives along the road at ``speed`` m/s in the right lane. The ground plane is
solved per row, facade and fence planes per column (so facades have true perspective), and
sprites (vehicles, pedestrians, lamps, signs, trees) are z-tested rectangles with drawn shapes.
Lighting and weather happen later (``effects.compose``) on these buffers, so the label and depth of
a frame do not depend on the weather, as in CARLA.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import classes as C
from . import scene as S
from .signs import draw_sign

FAR = 250.0  # metres; the sky's depth
SURF_SKY, SURF_GROUND, SURF_FACADE_L, SURF_FACADE_R, SURF_SPRITE = range(5)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float32), 0, 1)
    return c * c * np.sqrt(np.sqrt(c))  # c**2.25, close to the 2.2 display gamma and ~4x faster


def _hash2(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """Cheap integer hash of two int grids -> float32 in [0, 1)."""
    h = (a.astype(np.int64) * 73856093) ^ (b.astype(np.int64) * 19349663) ^ (seed * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


@dataclass
class Buffers:
    albedo: np.ndarray    # (H, W, 3) linear
    label: np.ndarray     # (H, W) uint8
    depth: np.ndarray     # (H, W) float32 metres
    surface: np.ndarray   # (H, W) uint8 SURF_*
    emissive: np.ndarray  # (H, W, 3) linear radiance of lamps, lit windows, vehicle lights (night)
    glow: np.ndarray      # (H, W, 3) lights that are on in daylight too (brake lights)
    ground_r: np.ndarray  # (H, W) lateral position of ground pixels (m), NaN elsewhere
    ground_z: np.ndarray  # (H, W) distance of ground pixels along the road
    lamps: np.ndarray     # (N, 2) (r, z) of street lamps near the camera
    horizon: float
    focal: float
    headlights: bool = True  # the camera looks where the car's headlights shine (False: rear, tail lights)


class Camera:
    def __init__(self, height: int = 128, width: int = 256, fov_deg: float = 90.0, horizon: float = 0.42):
        if height < 8 or width < 8:
            raise ValueError(f"image size {height}x{width} too small (min 8x8)")
        self.h, self.w = int(height), int(width)
        self.f = (width / 2) / np.tan(np.radians(fov_deg) / 2)
        self.cx = width / 2
        self.yh = height * horizon
        self.ys = np.arange(self.h, dtype=np.float64) + 0.5
        self.us = np.arange(self.w, dtype=np.float64) + 0.5


class Renderer:
    """Renders the geometry of world ``seed`` at time ``t`` (seconds since the start of the drive),
    seen by one of the car's cameras (``view``, ``world.views``: where it sits, which way it looks,
    its field of view); the default is the front camera every benchmark uses."""

    def __init__(self, seed: int = 0, height: int = 128, width: int = 256, speed: float = 8.0,
                 view: "str | View" = "front"):
        from .views import get_view

        self.seed = int(seed)
        self.layout = S.make_layout(self.seed)
        self.view = get_view(view)
        self.cam = Camera(height, width, fov_deg=self.view.fov_deg, horizon=self.view.horizon)
        self.speed = float(speed)
        self.d = float(self.view.direction)  # +1 looks along the road, -1 back
        self.cam_h = float(self.view.height_m or self.layout.camera_height)  # above the road
        self.cam_x = self.layout.lane_offset + self.view.lateral_m  # lateral position from the centre line

    def camera_z(self, t: float) -> float:
        return self.speed * t

    def render(self, t: float) -> Buffers:
        cam, lay = self.cam, self.layout
        H, W, f, yh = cam.h, cam.w, cam.f, cam.yh
        zc = self.camera_z(t)
        xc0 = float(S.road_centre(lay, zc))
        left, right, objs = S.gather(self.seed, lay, *sorted((zc, zc + self.d * FAR)))

        albedo = np.zeros((H, W, 3), np.float32)
        label = np.full((H, W), C.SKY, np.uint8)
        depth = np.full((H, W), FAR, np.float32)
        surface = np.zeros((H, W), np.uint8)
        emissive = np.zeros((H, W, 3), np.float32)
        glow = np.zeros((H, W, 3), np.float32)
        ground_r = np.full((H, W), np.nan, np.float32)
        ground_z = np.full((H, W), np.nan, np.float32)

        self._ground(zc, xc0, albedo, label, depth, surface, ground_r, ground_z)
        for side, segs in ((-1, left), (1, right)):
            self._facades(side, segs, zc, xc0, t, albedo, label, depth, surface, emissive)
        self._sprites(objs, zc, xc0, t, albedo, label, depth, surface, emissive, glow)
        lamp = objs.kind == S.OBJ_LAMP
        lamps = np.stack([objs.r[lamp], objs.z[lamp]], axis=1)
        ahead = self.d * (lamps[:, 1] - zc)
        lamps = lamps[(ahead > -10) & (ahead < 80)]
        return Buffers(albedo, label, depth, surface, emissive, glow, ground_r, ground_z, lamps, yh, f,
                       headlights=self.view.direction > 0)

    # ground ------------------------------------------------------------------------------------
    def _ground(self, zc, xc0, albedo, label, depth, surface, ground_r, ground_z):
        cam, lay = self.cam, self.layout
        rows = cam.ys > cam.yh + 0.5
        y = cam.ys[rows]
        Z = cam.f * self.cam_h / (y - cam.yh)           # (R,)
        keep = Z < FAR
        idx = np.nonzero(rows)[0][keep]
        Z = Z[keep]
        dc = S.road_centre(lay, zc + self.d * Z) - xc0
        r = self.d * (cam.us[None, :] - cam.cx) * Z[:, None] / cam.f + self.cam_x - dc[:, None]  # (R, W)
        zw = zc + self.d * Z[:, None] + 0 * r
        ar = np.abs(r)
        rh, sw = lay.road_half, lay.sidewalk
        lab = np.full(r.shape, C.TERRAIN, np.uint8)
        lab[ar < rh + sw] = C.SIDEWALK
        lab[ar < rh] = C.ROAD
        dash = np.mod(zw, 9.0) < 4.0
        line = ((ar < 0.17) & dash) | (np.abs(ar - (rh - 0.3)) < 0.15)
        lab[line] = C.ROAD_LINE
        n = _hash2(np.floor(r * 3), np.floor(zw * 3), self.seed)      # fine grain
        m = _hash2(np.floor(r / 2), np.floor(zw / 4), self.seed + 1)  # patches
        alb = np.empty(r.shape + (3,), np.float32)
        road = (0.28 + 0.05 * n + 0.04 * m).astype(np.float32)
        alb[...] = road[..., None]
        sel = lab == C.ROAD_LINE
        alb[sel] = (0.85, 0.85, 0.82)
        sel = lab == C.SIDEWALK
        tile = (np.mod(zw, 1.2) < 0.06) | (np.mod(r, 1.2) < 0.06)
        sw_v = (0.55 + 0.06 * n - 0.15 * tile)[sel]
        alb[sel] = np.stack([sw_v, sw_v * 0.98, sw_v * 0.95], -1)
        sel = lab == C.TERRAIN
        g = (0.7 + 0.3 * n + 0.3 * m)[sel]
        alb[sel] = np.stack([0.22 * g, 0.36 * g, 0.12 * g], -1)
        albedo[idx] = srgb_to_linear(alb)
        label[idx] = lab
        depth[idx] = np.broadcast_to(Z[:, None], r.shape)
        surface[idx] = SURF_GROUND
        ground_r[idx] = r
        ground_z[idx] = zw

    # facade and fence planes ----------------------------------------------------------------------
    def _plane_hits(self, side, offset, zc, xc0):
        """Depth at which each image column meets the vertical plane ``r = side * offset``."""
        cam, lay = self.cam, self.layout
        k = self.d * (cam.us - cam.cx) / cam.f  # a rear camera sees the world mirrored left-right
        target = side * offset - self.cam_x
        with np.errstate(divide="ignore", invalid="ignore"):
            Z = np.where(np.abs(k) > 1e-6, target / k, np.inf)
            for _ in range(3):  # fixed point: the plane follows the curving road
                dc = S.road_centre(lay, zc + self.d * np.clip(Z, 0, FAR)) - xc0
                Z = np.where(np.abs(k) > 1e-6, (target + dc) / k, np.inf)
        valid = np.isfinite(Z) & (Z > 0.8) & (Z < FAR)
        return np.where(valid, Z, np.inf), valid

    def _facades(self, side, segs, zc, xc0, t, albedo, label, depth, surface, emissive):
        cam, lay = self.cam, self.layout
        Y = cam.ys[:, None]
        # fence along the back of the sidewalk, in front of non-building segments
        Zf, vf = self._plane_hits(side, lay.road_half + lay.sidewalk + 0.05, zc, xc0)
        iseg = np.clip(np.searchsorted(segs.start, zc + self.d * np.where(vf, Zf, 0)) - 1, 0, len(segs.start) - 1)
        vf &= segs.fence[iseg]
        top = cam.yh - cam.f * (1.25 - self.cam_h) / Zf
        bot = cam.yh + cam.f * self.cam_h / Zf
        mask = vf[None, :] & (Y >= top[None, :]) & (Y < bot[None, :]) & (Zf[None, :] < depth)
        if mask.any():
            slat = (np.mod(zc + self.d * np.where(vf, Zf, 0.0), 0.5) < 0.42)[None, :]
            col = np.where(slat[..., None], (0.45, 0.36, 0.26), (0.33, 0.26, 0.18)).astype(np.float32)
            albedo[mask] = srgb_to_linear(np.broadcast_to(col, mask.shape + (3,))[mask])
            label[mask] = C.FENCE
            depth[mask] = np.broadcast_to(Zf[None, :], mask.shape)[mask]
            surface[mask] = SURF_FACADE_L if side < 0 else SURF_FACADE_R

        Z, valid = self._plane_hits(side, lay.setback[0 if side < 0 else 1], zc, xc0)
        zw = zc + self.d * np.where(valid, Z, 0)
        iseg = np.clip(np.searchsorted(segs.start, zw) - 1, 0, len(segs.start) - 1)
        kind = segs.kind[iseg]
        valid &= kind > 0
        hgt = segs.height[iseg]
        top = cam.yh - cam.f * (hgt - self.cam_h) / Z
        bot = cam.yh + cam.f * self.cam_h / Z
        mask = valid[None, :] & (Y >= top[None, :]) & (Y < bot[None, :]) & (Z[None, :] < depth)
        if not mask.any():
            return
        ys, us = np.nonzero(mask)
        Zp = Z[us]
        hw = self.cam_h - (cam.ys[ys] - cam.yh) * Zp / cam.f  # height above ground (m)
        zp = zw[us]
        seg = iseg[us]
        base = segs.color[seg]
        building = kind[us] == 1
        col = base.copy()
        # building: storeys of windows; vegetation: leafy noise
        sx, sy = segs.window[seg, 0], segs.window[seg, 1]
        wx = np.mod(zp - segs.start[seg], sx) / sx
        wy = np.mod(hw, sy) / sy
        win = building & (wx > 0.25) & (wx < 0.75) & (wy > 0.35) & (wy < 0.8) & (hw > 1.2) & (hw < hgt[us] - 0.8)
        col[win] = (0.12, 0.14, 0.17)
        leaf = _hash2(np.floor(zp * 4), np.floor(hw * 4), self.seed + 5)
        veg = ~building
        col[veg] = base[veg] * (0.6 + 0.7 * leaf[veg, None])
        albedo[ys, us] = srgb_to_linear(col)
        label[ys, us] = np.where(building, C.BUILDING, C.VEGETATION)
        depth[ys, us] = Zp
        surface[ys, us] = SURF_FACADE_L if side < 0 else SURF_FACADE_R
        lit = win & (_hash2(np.floor((zp - segs.start[seg]) / sx), np.floor(hw / sy), self.seed + 9) < 0.35)
        emissive[ys[lit], us[lit]] = (1.0, 0.8, 0.45)

    # sprites ---------------------------------------------------------------------------------------
    def _sprites(self, objs, zc, xc0, t, albedo, label, depth, surface, emissive, glow):
        lay = self.layout
        z_now = objs.z + objs.v * t
        Zo = self.d * (z_now - zc)
        # cull sprites that would cover less than about a pixel
        f_over_z = self.cam.f / np.maximum(Zo, 1e-3)
        vis = (Zo > 1.5) & (Zo < 140) & (f_over_z * np.maximum(objs.width, 0.6) > 0.8) & (f_over_z * objs.height > 3.0)
        # the lead car in the ego lane keeps a varying distance
        lead_d = 22.0 + 9.0 * np.sin(t / 7.0 + self.seed)
        order = np.argsort(-Zo[vis])
        ids = np.nonzero(vis)[0][order]
        for i in ids:
            self._draw(objs, i, Zo[i], z_now[i], zc, xc0, t, albedo, label, depth, surface, emissive, glow)
        # the car ahead in the ego lane (its back seen by a front camera; a rear camera sees the one
        # that follows, from the front)
        lead = S.Objects(np.array([S.OBJ_VEHICLE]), np.array([lay.lane_offset]), np.array([zc + self.d * lead_d]),
                         np.array([0.0]), np.array([1.8], np.float32), np.array([1.5], np.float32),
                         S.VEHICLE_COLORS[[self.seed % len(S.VEHICLE_COLORS)]],
                         np.array([(0.08, 0.09, 0.1)], np.float32), np.array([0]), np.array([0.0], np.float32))
        self._draw(lead, 0, lead_d, zc + self.d * lead_d, zc, xc0, t, albedo, label, depth, surface, emissive, glow)

    def _box(self, r, z_world, Z, zc, xc0, width, y_bottom_m, y_top_m):
        """Screen rectangle (float px) of a camera-facing sprite."""
        cam, lay = self.cam, self.layout
        x_cam = self.d * (r + float(S.road_centre(lay, z_world)) - xc0 - self.cam_x)
        u = cam.cx + cam.f * x_cam / Z
        half = cam.f * width / 2 / Z
        y_b = cam.yh + cam.f * (self.cam_h - y_bottom_m) / Z
        y_t = cam.yh + cam.f * (self.cam_h - y_top_m) / Z
        return u - half, u + half, y_t, y_b

    def _patch(self, x0, x1, y0, y1):
        cam = self.cam
        i0, i1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), cam.h)
        j0, j1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), cam.w)
        if i1 <= i0 or j1 <= j0:
            return None
        b = ((cam.ys[i0:i1] - y0) / max(y1 - y0, 1e-6))[:, None]
        a = ((cam.us[j0:j1] - x0) / max(x1 - x0, 1e-6))[None, :]
        return (slice(i0, i1), slice(j0, j1)), a, b

    def _write(self, sl, mask, Z, cls, col, albedo, label, depth, surface, emis=None, emissive=None):
        m = mask & (depth[sl] > Z)
        if not m.any():
            return
        col = np.broadcast_to(np.asarray(col, np.float32), m.shape + (3,))
        albedo[sl][m] = srgb_to_linear(col[m])
        label[sl][m] = cls
        depth[sl][m] = Z
        surface[sl][m] = SURF_SPRITE
        if emis is not None:
            e = np.broadcast_to(np.asarray(emis, np.float32), m.shape + (3,))
            emissive[sl][m] = e[m]

    def _draw(self, o, i, Z, z_world, zc, xc0, t, albedo, label, depth, surface, emissive, glow):
        kind, r, w, h = int(o.kind[i]), float(o.r[i]), float(o.width[i]), float(o.height[i])
        c1, c2 = o.color[i], o.color2[i]
        bufs = (albedo, label, depth, surface)
        if kind == S.OBJ_VEHICLE:
            p = self._patch(*self._box(r, z_world, Z, zc, xc0, w, 0.0, h))
            if p is None:
                return
            sl, a, b = p
            body = (b > 0.38) & (b < 0.88)
            cabin = (b <= 0.38) & (a > 0.1 + 0.12 * (1 - b / 0.38)) & (a < 0.9 - 0.12 * (1 - b / 0.38))
            glass = cabin & (b > 0.06) & (b < 0.34) & (a > 0.16) & (a < 0.84)
            wheels = (b >= 0.82) & (((a > 0.06) & (a < 0.26)) | ((a > 0.74) & (a < 0.94)))
            col = np.where(glass[..., None], c2, c1)
            col = np.where(wheels[..., None], (0.04, 0.04, 0.04), col)
            self._write(sl, body | cabin | wheels, Z, C.VEHICLE, col, *bufs)
            lamp = (b > 0.48) & (b < 0.6) & (((a > 0.04) & (a < 0.2)) | ((a > 0.8) & (a < 0.96)))
            front = (int(o.sub[i]) == 1) != (self.d < 0)  # which side of it this camera sees
            lamp_col = (1.0, 0.95, 0.8) if front else (0.9, 0.05, 0.03)
            self._write(sl, lamp, Z, C.VEHICLE, lamp_col, *bufs,
                        emis=(4.0, 3.8, 3.2) if front else (2.5, 0.1, 0.05), emissive=emissive)
            if not front:  # tail lights glow a little in daylight too (brake lights)
                m = lamp & (depth[sl] >= Z - 1e-3)
                glow[sl][m] = (0.4, 0.02, 0.01)
        elif kind == S.OBJ_PEDESTRIAN:
            p = self._patch(*self._box(r, z_world, Z, zc, xc0, w, 0.0, h))
            if p is None:
                return
            sl, a, b = p
            swing = 0.12 * np.sin(o.phase[i] + t * 5.0)
            head = np.hypot((a - 0.5) * w, (b - 0.07) * h) < 0.11
            torso = (b > 0.14) & (b < 0.55) & (a > 0.18) & (a < 0.82)
            leg_l = (b >= 0.55) & (np.abs(a - 0.36 - swing * (b - 0.55)) < 0.11)
            leg_r = (b >= 0.55) & (np.abs(a - 0.64 + swing * (b - 0.55)) < 0.11)
            col = np.where(head[..., None], (0.75, 0.55, 0.42), np.where(torso[..., None], c1, c2))
            self._write(sl, head | torso | leg_l | leg_r, Z, C.PEDESTRIAN, col, *bufs)
        elif kind == S.OBJ_LAMP:
            p = self._patch(*self._box(r, z_world, Z, zc, xc0, w, 0.0, h))
            if p is not None:
                sl, a, b = p
                self._write(sl, np.ones(np.broadcast_shapes(a.shape, b.shape), bool), Z, C.POLE, c1, *bufs)
            p = self._patch(*self._box(r - np.sign(r) * 0.5, z_world, Z, zc, xc0, 1.1, h - 0.35, h))
            if p is not None:
                sl, a, b = p
                self._write(sl, np.ones(np.broadcast_shapes(a.shape, b.shape), bool), Z, C.POLE, (0.3, 0.3, 0.3),
                            *bufs, emis=(6.0, 5.0, 3.0), emissive=emissive)
        elif kind == S.OBJ_SIGN:
            plate = w * 0.8
            p = self._patch(*self._box(r, z_world, Z, zc, xc0, 0.12, 0.0, h - plate / 2))
            if p is not None:
                sl, a, b = p
                self._write(sl, np.ones(np.broadcast_shapes(a.shape, b.shape), bool), Z, C.POLE, c1, *bufs)
            x0, x1, y0, y1 = self._box(r, z_world, Z, zc, xc0, plate, h - plate, h)
            p = self._patch(x0, x1, y0, y1)
            if p is not None:
                sl, a, b = p
                size = max(int(round(x1 - x0)), 1)
                alpha, col = draw_sign(int(o.sub[i]), size)
                ii = np.clip((b[:, 0] * size).astype(int), 0, size - 1)
                jj = np.clip((a[0] * size).astype(int), 0, size - 1)
                al = alpha[np.ix_(ii, jj)]
                self._write(sl, al > 0.5, Z - 0.05, C.SIGN, col[np.ix_(ii, jj)], *bufs)
        elif kind == S.OBJ_TREE:
            p = self._patch(*self._box(r, z_world, Z, zc, xc0, 0.35, 0.0, h * 0.55))
            if p is not None:
                sl, a, b = p
                self._write(sl, np.ones(np.broadcast_shapes(a.shape, b.shape), bool), Z, C.VEGETATION, c2, *bufs)
            p = self._patch(*self._box(r, z_world, Z, zc, xc0, w, h * 0.35, h))
            if p is not None:
                sl, a, b = p
                ang = np.arctan2(b - 0.5, a - 0.5)
                wob = 1.0 + 0.12 * np.sin(5 * ang + o.phase[i]) + 0.06 * np.sin(11 * ang)
                crown = np.hypot(a - 0.5, b - 0.5) * 2 < 0.95 * wob
                leaf = _hash2(np.floor(a * 24) + 0 * b, np.floor(b * 24) + 0 * a, self.seed + int(o.z[i]))
                col = c1[None, None, :] * (0.65 + 0.6 * leaf[..., None])
                self._write(sl, crown, Z, C.VEGETATION, col, *bufs)
