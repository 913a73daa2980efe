"""The catalogue's scenes: how each was cut, where its chips lie on the ground, and its windows too empty to embed."""
import json

import numpy as np


class SceneRecords:
    """Store's scene and place methods, over its catalogue (self.db, a sqlite_utils Database)."""

    def chips_at(self, lon: float, lat: float, *, limit: int = 50) -> list[dict]:
        """Indexed chips whose WGS84 bounds hold the point (lon, lat), the one whose centre is nearest first
        (the latest dated among equally near ones): the chips that show that place, on every date it was
        imaged. Each {id, path, scene, date, centroid, distance_m}, the distance from the point to the chip's
        centre (metres, spherical approximation)."""
        # 180 and -180 are one meridian; at a pole every longitude meets
        rows = dict.fromkeys(row for point in ({lon, -lon} if abs(lon) == 180 else {lon})
                             for row in self._chips_over(point, lat, any_lon=abs(lat) >= 90))
        found = []
        for image_id, path, scene, date, centroid in rows:
            c_lon, c_lat = json.loads(centroid)
            east = ((lon - c_lon + 180) % 360 - 180) * np.cos(np.radians(lat))
            found.append({"id": image_id, "path": path, "scene": scene, "date": date, "centroid": [c_lon, c_lat],
                          "distance_m": float(np.hypot(east, lat - c_lat) * 111_320)})
        found.sort(key=lambda chip: chip["id"])
        found.sort(key=lambda chip: chip["date"] or "", reverse=True)  # stable: the latest first among equals
        found.sort(key=lambda chip: round(chip["distance_m"], 1))
        return found[:limit]

    def _chips_over(self, lon: float, lat: float, *, any_lon: bool = False) -> list[tuple]:
        """(id, path, scene, date, centroid) of the chips whose WGS84 bounds hold the point (any longitude with
        `any_lon`)."""
        boxed = "image_boxes" in self.db.table_names()  # the R*Tree narrows; the exact bounds decide
        return self.db.execute(
            "SELECT images.id, path, scene, json_extract(geo, '$.date'), json_extract(geo, '$.centroid') FROM "
            + ("image_boxes JOIN images ON images.id = image_boxes.id WHERE "
               + ("" if any_lon else "west <= :lon AND east >= :lon AND ")
               + "south <= :lat AND north >= :lat AND " if boxed else "images WHERE ")
            + "json_extract(geo, '$.wgs84_bounds[1]') <= :lat AND json_extract(geo, '$.wgs84_bounds[3]') >= :lat "
            + ("" if any_lon else
               "AND ((json_extract(geo, '$.wgs84_bounds[0]') <= :lon "
               "      AND json_extract(geo, '$.wgs84_bounds[2]') >= :lon) "
               # a footprint across the antimeridian has west > east
               " OR (json_extract(geo, '$.wgs84_bounds[0]') > json_extract(geo, '$.wgs84_bounds[2]') "
               "     AND (json_extract(geo, '$.wgs84_bounds[0]') <= :lon "
               "          OR json_extract(geo, '$.wgs84_bounds[2]') >= :lon)))"),
            {"lon": float(lon), "lat": float(lat)}).fetchall()

    def scenes_by_path(self) -> dict[str, dict]:
        """path → {path, size, mtime, options, sha256, head_sha256, windows, georeferenced, sidecars, reading,
        pixels}; those after options None where an older lookalike recorded the scene."""
        return {row["path"]: {"sha256": None, "head_sha256": None, "windows": None, "georeferenced": None,
                              "sidecars": None, "reading": None, "pixels": None, **row}
                for row in self.db.query("SELECT * FROM scenes")}

    def record_scene(self, path: str, *, size: int, mtime: float, options: dict, sha256: str | None = None,
                     head_sha256: str | None = None, windows: int | None = None, georeferenced: bool | None = None,
                     sidecars: str | None = None, reading: str | None = None, pixels: str | None = None) -> None:
        """`windows`: how many the scene was cut into; `georeferenced`: a scene, not a large plain image;
        `sidecars`: its sidecar files' sizes and times (JSON); `reading`: a digest of how it read with them;
        `pixels`: a digest of what its windows' pixels depend on (the reading less its place on the ground)."""
        self.db["scenes"].upsert({"path": path, "size": size, "mtime": mtime, "sha256": sha256,
                                  "head_sha256": head_sha256,
                                  "options": json.dumps(options, sort_keys=True), "windows": windows,
                                  "georeferenced": georeferenced, "sidecars": sidecars, "reading": reading,
                                  "pixels": pixels},
                                 pk="path", alter=True)

    def set_scene_sha256(self, path: str, sha256: str, *, head_sha256: str | None = None) -> None:
        """The scene's SHA-256, and that of its first bytes (images.HEAD_BYTES)."""
        self.db["scenes"].update(path, {"sha256": sha256, "head_sha256": head_sha256}, alter=True)

    def touch_scene(self, path: str, *, size: int, mtime: float) -> None:
        """Same content under a new mtime: the scene and its chips remember it (so the page shows them again)."""
        with self.db.atomic():
            self.db.execute("UPDATE scenes SET size = ?, mtime = ? WHERE path = ?", [size, mtime, path])
            self.db.execute("UPDATE images SET size = ?, mtime = ? WHERE scene = ?", [size, mtime, path])

    def move_scene(self, old: str, new: str, *, size: int, mtime: float, date=None, dated: bool = False) -> None:
        """A scene found under a new path with the same bytes: its record, its chips (ids, vectors and all, with
        the new file's size and time) and its too-empty windows follow it. `dated`: its chips take `date`, the
        date the new path gives (a date in a file name may change with it)."""
        start = len(old) + 1  # chip keys are "<scene path>#<window>": the new path, then the same window
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            self.db.execute("UPDATE scenes SET path = ?, size = ?, mtime = ? WHERE path = ?", [new, size, mtime, old])
            self.db.execute("UPDATE images SET path = ? || substr(path, ?), scene = ?, size = ?, mtime = ? "
                            "WHERE scene = ?", [new, start, new, size, mtime, old])
            self.db.execute("UPDATE skipped_chips SET key = ? || substr(key, ?), scene = ? WHERE scene = ?",
                            [new, start, new, old])
            if dated:
                self.db.execute("UPDATE images SET geo = json_set(geo, '$.date', ?) WHERE scene = ?", [date, new])

    def relocate_chips(self, geos: dict) -> None:
        """Chips whose scene now lies elsewhere on the ground, same pixels: id → their new geo (the place index
        follows, by trigger); their vectors and patch features stay."""
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            self.db.conn.executemany("UPDATE images SET geo = ? WHERE id = ?",
                                     [(json.dumps(geo), int(image_id)) for image_id, geo in geos.items()])

    def forget_scene(self, path: str) -> None:
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            self.db.execute("DELETE FROM skipped_chips WHERE scene = ?", [path])
            self.db.execute("DELETE FROM scenes WHERE path = ?", [path])

    def chips_of_scene(self, scene: str) -> list[tuple[int, int | None]]:
        """(id, run id) of the chips cut from `scene` (a scene's path, or a plain image's cut into chips)."""
        return [(row[0], row[1]) for row in self.db.execute("SELECT id, run_id FROM images WHERE scene = ?", [scene])]

    def skipped_chip_keys(self, scene: str) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT key FROM skipped_chips WHERE scene = ?", [scene])}

    def record_skipped_chips(self, chips: list[tuple[str, str]]) -> None:
        """(chip key, scene) pairs whose valid share was under --min-valid: done, with nothing to embed."""
        with self.db.atomic():  # one transaction: readers and crashes see all of it or none
            self.db.conn.executemany("INSERT OR REPLACE INTO skipped_chips (key, scene) VALUES (?, ?)", chips)

    def scene_list(self) -> list[dict]:
        """Per scene: the bands used and why, CRS, date and chip count (plain images cut into chips too)."""
        rows = self.db.execute(
            "SELECT scene, json_extract(geo, '$.bands'), json_extract(geo, '$.band_source'), "
            "json_extract(geo, '$.crs'), json_extract(geo, '$.date'), count(*) FROM images "
            "WHERE scene IS NOT NULL GROUP BY scene ORDER BY scene")
        return [{"scene": scene, "bands": json.loads(bands) if bands else None, "band_source": source, "crs": crs,
                 "date": date, "chips": chips} for scene, bands, source, crs, date, chips in rows]

    def wgs84_extent(self) -> list | None:
        """[west, south, east, north] over every chip footprint, or None without georeferenced chips."""
        row = self.db.execute(
            "SELECT min(json_extract(geo, '$.wgs84_bounds[0]')), min(json_extract(geo, '$.wgs84_bounds[1]')), "
            "max(json_extract(geo, '$.wgs84_bounds[2]')), max(json_extract(geo, '$.wgs84_bounds[3]')) "
            "FROM images WHERE geo IS NOT NULL").fetchone()
        return list(row) if row and row[0] is not None else None
