"""What a run will do: the files and scenes on disk against the catalogue, what to embed, skip and remove."""
import contextlib
import dataclasses
import json
import os
import stat as stat_module
import threading
from dataclasses import dataclass, field
from pathlib import Path

from store import Store
from store.swap import recorded_runs

from . import scenes
from .chip_records import chip_record
from .errors import IndexerError
from .images import (IMAGE_SUFFIXES, NOT_A_FILE_REASON, OUTSIDE_LINK_REASON, RASTER_SUFFIXES, READ_ERROR,
                     OutsideLink, file_digests, file_sha256, read_error, upright_size)
from .moves import READING_FIELDS, Moves
from .scenes import Scene
from .scene_copies import SceneTwins
from .sidecars import Sidecars, reading_and_pixels_digests
from .writer import record_failure

SCENE_SUFFIXES = {".tif", ".tiff"} | RASTER_SUFFIXES
SHRINK_LIMIT = 0.5  # a run that would leave the store with less than this share of its images: refused unasked


@dataclass
class Job:
    path: str  # the catalogue key: a file's path, or "scene#col,row,width,height" for a chip
    size: int
    mtime: float
    image_id: int | None = None  # set when a changed file replaces an indexed one
    scene: Scene | None = None  # set for a chip of a georeferenced scene
    window: tuple | None = None
    plain_source: str | None = None  # set for a chip of a large plain image
    copy_of: int | None = None  # the chip of another scene with the same bytes whose vector this chip takes
    copy_key: str | None = None  # the same, of a scene embedded earlier in this run: that chip's key, once written


@dataclass(frozen=True)
class ChipOptions:
    """How georeferenced scenes are cut into chips (plain images are embedded whole)."""

    chip_size: int = 512
    overlap: int = 0
    min_valid: float = 0.5
    bands: tuple | None = None
    stretch: tuple = (2, 98)
    gsd: float | None = None  # metres per pixel wanted: a chip then covers chip_size x gsd metres of ground
    chip_plain: bool = False  # plain images larger than chip_size are cut into chips too

    def __post_init__(self):
        # Runs compare their options as JSON: stretch=(2, 98) from Python must read as the CLI's (2.0, 98.0).
        numbers = {"stretch": tuple(float(v) for v in self.stretch), "min_valid": float(self.min_valid),
                   "gsd": None if self.gsd is None else float(self.gsd),
                   "bands": None if self.bands is None else tuple(int(b) for b in self.bands)}
        for name, value in numbers.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_record(cls, options: dict) -> "ChipOptions":
        """The options as a run or a scene recorded them (JSON lists for tuples; an option an older lookalike
        did not record takes its default)."""
        known = {option.name for option in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in options.items() if name in known})


@dataclass
class Plan:
    jobs: list = field(default_factory=list)
    skipped: int = 0
    scenes: int = 0
    removed_ids: list = field(default_factory=list)
    moved: int = 0  # images found under a new path with the same bytes: they keep their ids and vectors
    moves: list = field(default_factory=list)  # (image_id, new path, size, mtime) of moved files
    # chip id -> its new geo: the scene moved on the ground, not its pixels
    relocated: dict = field(default_factory=dict)
    scene_moves: list = field(default_factory=list)  # (old path, new path, size, mtime, date, georeferenced)
    forget_failures: list = field(default_factory=list)  # failed files gone, or scenes that now open
    forget_scenes: list = field(default_factory=list)  # scenes changed or gone: their records start over
    # Store.record_scene keywords of the scenes planned in full
    scene_records: list = field(default_factory=list)
    to_hash: list = field(default_factory=list)  # (path, size, mtime) of the scenes cut now (hashing_scenes)
    failures: list = field(default_factory=list)  # (path, reason, size, mtime)
    gone: int = 0  # images removed because their files are gone from disk (not moved)


def precheck_store(store_dir, recorded: dict | None, *, resolution: int, normalization: dict, pooling: str) -> None:
    """Refuse a provenance mismatch with the store's `recorded` one (Store.peek_provenance) before the (possibly
    minutes-long) model load."""
    from store.store import guarded_problems, mismatch_error

    if recorded is None:
        return
    problems = guarded_problems(recorded, {"resolution": resolution, "normalization": normalization,
                                           "pooling": pooling})
    if problems:
        raise mismatch_error(store_dir, problems)


def plan_run(paths: list[Path], store: Store, *, chips: ChipOptions = ChipOptions(), write: bool = True,
             retry_failed: bool = False, allow_shrink: bool = True) -> Plan:
    """Compare the files on disk with the catalogue: what to embed, skip and remove. A file (or scene) with
    the same bytes under a new time has the new time recorded unless `write` is false (a dry run). A file that
    failed is tried again when it or the chip options changed, when the system would not let it be read, or
    with `retry_failed`. Unless `allow_shrink`, a plan that would leave the store with under SHRINK_LIMIT of its
    images because their files are gone (a drive or share not mounted) is refused before anything is removed."""
    planner = _Planner(store, chips=chips, write=write, retry_failed=retry_failed)
    for path in paths:
        planner.add(path)
    plan = planner.finish()
    held = store.count_images() if not allow_shrink and plan.gone else 0
    coming = sum(1 for job in plan.jobs if job.image_id is None)  # a folder renamed: its files come back as new
    if held and held - plan.gone + coming < SHRINK_LIMIT * held:
        raise IndexerError(f"{plan.gone:,} of the store's {held:,} images are gone from disk (a drive or share not "
                           "mounted?): nothing was removed. Run again once they are back, or with --allow-shrink "
                           "to remove them from the store")
    return plan


class _Planner:
    """One plan_run: the catalogue as it was when the run began, and the plan that the files on disk fill in."""

    def __init__(self, store: Store, *, chips: ChipOptions, write: bool, retry_failed: bool):
        self.store, self.chips, self.write, self.retry_failed = store, chips, write, retry_failed
        self.plan = Plan()
        self.known = store.images_by_path()
        self.known_failures = store.failures_by_path()
        # A failure may come from the chip options (bands a scene lacks, --gsd on degrees): retried when they change.
        self.options_now = options_key(dataclasses.asdict(chips))
        self.options_of_run = {run["run_id"]: options_key(run.get("chips")) for run in recorded_runs(store)}
        self.scene_options = options_key(dataclasses.asdict(chips), scene=True)
        self.scene_records = {path: dict(record, options=options_key(record["options"], scene=True))
                              for path, record in store.scenes_by_path().items()}
        self.chips_of = {}
        for row in self.known.values():
            if row["scene"]:
                self.chips_of.setdefault(row["scene"], []).append(row)
        self.failing_now = set()
        self.gone_rows = [row for key, row in self.known.items() if _gone(row["scene"] or key)]
        self.gone_scenes = [record for key, record in self.scene_records.items() if _gone(key)]
        self.moves = Moves(store, gone_rows=self.gone_rows, gone_scenes=self.gone_scenes, chips_of=self.chips_of)
        self.sidecars = Sidecars()
        self.twins = SceneTwins(store, scene_records=self.scene_records, chips_of=self.chips_of,
                                sidecars=self.sidecars)

    def unreadable(self, key: str, reason: str) -> None:
        self.failing_now.add(key)
        known = self.known_failures.get(key)
        if known and known["reason"] == reason:
            self.plan.skipped += 1  # the same failure as last time: nothing new to say
        else:
            self.plan.failures.append((key, reason, None, None))

    def add(self, path: Path) -> None:
        """Plan one file or scene given on the command line (or found in a folder)."""
        key = str(path)
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:  # SQLite stores UTF-8: keep the name's bytes visible, escaped
            self.unreadable(os.fsencode(path).decode("utf-8", "backslashreplace"),
                            "file name is not valid UTF-8 (rename the file to index it)")
            return
        if isinstance(path, OutsideLink):
            self.unreadable(key, OUTSIDE_LINK_REASON)
            return
        try:
            stat = path.stat()
        except OSError as error:
            self.unreadable(key, read_error(error))
            return
        if not stat_module.S_ISREG(stat.st_mode):  # a pipe would block the run for good on its first read
            self.unreadable(key, NOT_A_FILE_REASON)
            return
        self._place(path, key, stat)

    def _place(self, path: Path, key: str, stat) -> None:
        plan, chips, row, failure = self.plan, self.chips, self.known.get(key), self.known_failures.get(key)
        if failure and (failure["size"], failure["mtime"]) == (stat.st_size, stat.st_mtime) \
                and self.options_of_run.get(failure["run_id"]) == self.options_now \
                and not self.retry_failed and not failure["reason"].startswith(READ_ERROR):
            plan.skipped += 1  # failed before, file and options unchanged since: the failure stays recorded
        elif (done := _scene_done(self.scene_records.get(key), self.chips_of.get(key, []), stat, self.store,
                                  sidecars=self.sidecars, options_text=self.scene_options,
                                  chip_plain=chips.chip_plain)) is not None:
            plan.skipped += done  # nothing to open: an unchanged scene with every window embedded or found empty
            if not self.scene_records[key].get("sha256"):  # a killed run finished it but never kept its hash
                plan.to_hash.append((key, stat.st_size, stat.st_mtime))
        elif (georeferenced := is_scene(path)) or (chips.chip_plain and _larger_than(path, chips.chip_size)):
            if row:
                plan.removed_ids.append(row["id"])  # embedded whole before, cut into chips now
            _plan_scene(plan, self.store, path, stat, self.chips_of.get(key, []), self.scene_records.get(key),
                        chips, georeferenced=georeferenced, write=self.write, moves=self.moves,
                        sidecars=self.sidecars, twins=self.twins)
        elif key in self.chips_of:  # cut into chips before, embedded whole now
            plan.removed_ids += [c["id"] for c in self.chips_of[key]]
            plan.forget_scenes.append(key)
            plan.jobs.append(Job(key, stat.st_size, stat.st_mtime))
        elif row and row["size"] == stat.st_size and row["mtime"] == stat.st_mtime:
            plan.skipped += 1
        elif row and row["size"] == stat.st_size and _same_content(path, row["sha256"]):
            if self.write:
                self.store.touch_image(row["id"], size=stat.st_size, mtime=stat.st_mtime)
            plan.skipped += 1
        elif row is None and (gone := self.moves.file(path, stat.st_size)) is not None:
            plan.moves.append((gone["id"], key, stat.st_size, stat.st_mtime))
            plan.moved += 1
            if key in self.known_failures:  # a failure this path had before is history: its content is indexed
                plan.forget_failures.append(key)
        else:
            plan.jobs.append(Job(key, stat.st_size, stat.st_mtime, image_id=row["id"] if row else None))

    def finish(self) -> Plan:
        """The plan, with what is gone from disk: removed, unless it moved; failures and scenes forgotten."""
        plan = self.plan
        moved_ids = {move[0] for move in plan.moves}
        moved_scenes = {move[0] for move in plan.scene_moves}
        gone = [row["id"] for row in self.gone_rows if row["id"] not in moved_ids and row["scene"] not in moved_scenes]
        plan.removed_ids += gone
        plan.gone = len(gone)
        plan.forget_failures += [key for key in self.known_failures
                                 if _gone(key) and key not in self.failing_now]
        plan.forget_failures += [record["path"] for record in plan.scene_records
                                 if record["path"] in self.known_failures]
        plan.forget_scenes += [record["path"] for record in self.gone_scenes if record["path"] not in moved_scenes]
        return plan


def _gone(path: str) -> bool:
    """A catalogued file no longer there: nothing at its path (a link to nothing counts as nothing: its file is
    gone too), or a folder now (what it holds is scanned anew). Not a file the system refuses to show (a folder
    without execute permission, a share away): that one is kept."""
    try:
        return stat_module.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False


def options_key(options, *, scene: bool = False) -> str:
    """Chip options (a dict, or JSON as recorded) as text to compare: numbers as the CLI gives them (2.0, not 2);
    for a scene without chip_plain, which concerns plain images only."""
    options = json.loads(options) if isinstance(options, str) else options
    if options is None:
        return "null"
    normal = dataclasses.asdict(ChipOptions.from_record(options))
    if scene:
        del normal["chip_plain"]
    return json.dumps(normal, sort_keys=True)


def _scene_done(record: dict | None, known_chips: list, stat, store: Store, *, sidecars: Sidecars,
                options_text: str, chip_plain: bool) -> int | None:
    """The number of windows of a scene recorded with this size, time, these options and these sidecars, when
    every one is done; else None, and the scene is opened and planned in full (as it is when an older lookalike
    recorded it, without its window count or sidecars)."""
    if record is None or record["windows"] is None or record["georeferenced"] is None:
        return None
    if (record["size"], record["mtime"], record["options"]) != (stat.st_size, stat.st_mtime, options_text):
        return None
    if record["georeferenced"] and record["sidecars"] != _signature_text(sidecars, record["path"]):
        return None  # a sidecar came, went or changed: opened to see whether the scene reads differently
    if not (record["georeferenced"] or chip_plain):
        return None  # a large plain image cut into chips before, embedded whole now
    done = {chip["path"] for chip in known_chips} | store.skipped_chip_keys(record["path"])
    return record["windows"] if len(done) == record["windows"] else None


def is_scene(path: Path) -> bool:
    """A TIFF with a coordinate reference system: read by windows and cut into chips."""
    return path.suffix.lower() in SCENE_SUFFIXES and scenes.is_georeferenced(path)


def _plan_scene(plan: Plan, store: Store, path: Path, stat, known_chips: list, record: dict | None,
                chips: ChipOptions, *, georeferenced: bool, write: bool = True, moves: Moves | None = None,
                sidecars: Sidecars | None = None, twins: SceneTwins | None = None) -> None:
    """Embed the windows of a scene not yet done: all of them when the scene, the chip options or the way it
    reads with its sidecars changed (a new .msk, a nodata value in .aux.xml; not statistics written there).

    A window is done when its chip is in the catalogue or was found too empty (under --min-valid), so a
    run cut short goes on where it stopped. A new scene with the bytes of a gone one (`moves`) takes over
    its chips; one with the bytes of a scene still there, or of one this run embeds before it (`twins`), has its
    chips copied from that scene's.
    """
    key, options = str(path), dataclasses.asdict(chips)
    options_text = options_key(options, scene=True)
    try:
        scene, windows, plain_source = _cut(path, chips, georeferenced=georeferenced)
    except IndexerError as error:
        scene, failure = None, error
    else:
        failure = None
    moved_from = None
    if record is None and not known_chips and moves is not None and failure is None:
        moved = _moved_scene(plan, moves, path=path, stat=stat, scene=scene, options_text=options_text,
                             georeferenced=georeferenced)
        if moved is not None:
            moved_from, record, known_chips = moved
    copy_of, digests, copy_from = {}, None, None
    # nothing of it done yet (new, or its chips still to be copied when a run was cut short): a copy of a twin?
    fresh = not known_chips and (record is None or not store.skipped_chip_keys(key))
    if fresh and twins is not None and georeferenced and failure is None:
        copy_of, digests, copy_from = _twin_copies(twins, key=key, scene=scene, stat=stat, options_text=options_text)
    if record is not None and (record["size"], record["options"]) == (stat.st_size, options_text) \
            and record["mtime"] != stat.st_mtime and _same_content(path, record.get("sha256")):
        if write:
            store.touch_scene(key, size=stat.st_size, mtime=stat.st_mtime)  # the same bytes under a new time (a copy)
        record = dict(record, mtime=stat.st_mtime)
    signature = _signature_text(sidecars or Sidecars(), key) if georeferenced else None
    reading, pixels = reading_and_pixels_digests(scene) if georeferenced and failure is None else (None, None)
    same_file = record is not None and (record["size"], record["mtime"], record["options"]) == (
        stat.st_size, stat.st_mtime, options_text)
    reads_differently = same_file and _reads_differently(record, signature, reading)
    # a sidecar moved it on the ground (a world file, a GeoTransform in .aux.xml): its windows read as before
    relocated = reads_differently and pixels is not None and record.get("pixels") == pixels
    unchanged = same_file and (relocated or not reads_differently)
    if not unchanged:
        plan.removed_ids += [c["id"] for c in known_chips]
        plan.forget_scenes.append(key)
    if failure is not None:
        plan.failures.append((key, str(failure).removeprefix(key + ": "), stat.st_size, stat.st_mtime))
        return
    skipped_keys = moves.skipped_chip_keys(moved_from, key) if moved_from else store.skipped_chip_keys(key)
    kept = _relocate(plan, store, path=path, stat=stat, scene=scene, windows=windows, known_chips=known_chips,
                     chips=chips) if relocated else known_chips
    done = ({c["path"] for c in kept} | skipped_keys) if unchanged else set()
    missing = [window for window in windows if chip_key(path, window) not in done]
    if missing and unchanged and not moved_from and twins is not None and georeferenced:
        twins.plan_part_done(scene, stat.st_size, options_text)
    plan.skipped += len(windows) - len(missing) - (len(kept) if moved_from or relocated else 0)
    if missing:
        plan.scenes += 1
    plan.scene_records.append({"path": key, "size": stat.st_size, "mtime": stat.st_mtime, "options": options,
                               "sha256": record.get("sha256") if unchanged else (digests and digests[0]),
                               "head_sha256": record.get("head_sha256") if unchanged else (digests and digests[1]),
                               "windows": len(windows), "georeferenced": georeferenced, "sidecars": signature,
                               "reading": reading, "pixels": pixels})
    # hashed while cut: a scene new or changed; and, its hash taken as the run ends, one unchanged but unhashed (a
    # killed run left it so, done or part-done, or a lookalike older than scene hashes recorded it): else a later
    # move or copy of it would be cut again, not recognised
    if (not unchanged and digests is None) or (unchanged and not record.get("sha256")):
        plan.to_hash.append((key, stat.st_size, stat.st_mtime))
    plan.jobs += [Job(chip_key(path, w), stat.st_size, stat.st_mtime, scene=scene, window=w, plain_source=plain_source,
                      copy_of=copy_of.get(chip_key(path, w)), copy_key=copy_from and chip_key(copy_from, w))
                  for w in missing]


def _moved_scene(plan: Plan, moves: Moves, *, path: Path, stat, scene, options_text: str, georeferenced: bool):
    """A new scene with the bytes (and, georeferenced, the reading) of one gone from its old path takes over that
    scene's chips: (old path, its record under the new path, its chips), the move planned; else None."""
    fields = {name: value for name, value in scene.as_record().items() if name in READING_FIELDS} \
        if georeferenced else None
    pixels = (lambda: reading_and_pixels_digests(scene)[1]) if georeferenced else None  # reads any .msk: when asked
    gone = moves.scene(path, stat.st_size, options_text, reading=fields, pixels=pixels)
    if gone is None:
        return None
    key = str(path)
    moved_from, record = gone["path"], dict(gone, path=key, mtime=stat.st_mtime)
    known_chips = moves.chips(moved_from, key)
    plan.scene_moves.append((moved_from, key, stat.st_size, stat.st_mtime, scene.date if georeferenced else None,
                             georeferenced))
    plan.moved += len(known_chips)
    return moved_from, record, known_chips


def _twin_copies(twins: SceneTwins, *, key: str, scene, stat, options_text: str) -> tuple:
    """(chip key → id to copy, digests, scene path to copy from) for a scene with another's bytes: one embedded
    before and still there (its chips' vectors serve now), or one this run embeds first (they serve once
    written); ({}, None, None) for a scene of its own."""
    found = twins.find(scene, stat.st_size, options_text)
    if found is not None:
        return twins.chip_ids(found["path"], key), (found["sha256"], found["head_sha256"]), None
    earlier = twins.find_planned(scene, stat.st_size, options_text)
    if earlier is not None:
        copy_from, digests = earlier
        return {}, digests, copy_from
    return {}, None, None


def _relocate(plan: Plan, store: Store, *, path: Path, stat, scene: Scene, windows, known_chips, chips: ChipOptions):
    """The chips of a scene that now lies elsewhere on the ground, its pixels the same: those whose window is still
    cut keep their ids and vectors and take new places (plan.relocated); the others go (a --gsd window may change
    with the pixel size). Returns the kept ones."""
    current = {chip_key(path, window): window for window in windows}
    kept = [chip for chip in known_chips if chip["path"] in current]
    plan.removed_ids += [chip["id"] for chip in known_chips if chip["path"] not in current]
    recorded = store.images([chip["id"] for chip in kept])
    for chip in kept:
        job = Job(chip["path"], stat.st_size, stat.st_mtime, scene=scene, window=current[chip["path"]])
        valid = recorded[chip["id"]]["geo"]["valid_fraction"]
        plan.relocated[chip["id"]] = chip_record(job, valid=valid, stretch=chips.stretch, gsd=chips.gsd)["geo"]
    return kept


def _signature_text(sidecars: Sidecars, path) -> str:
    return json.dumps(sidecars.signature(path), sort_keys=True)


def _reads_differently(record: dict, signature: str | None, reading: str | None) -> bool:
    """Whether a sidecar changed how the scene reads since it was recorded. Asked only when the sidecars changed,
    so that a newer GDAL spelling the same CRS another way does not cut every scene again; a scene recorded
    without its sidecars (an older lookalike) is taken as read the same."""
    if signature is None or record.get("sidecars") in (None, signature) or record.get("reading") is None:
        return False
    return record["reading"] != reading


def _cut(path: Path, chips: ChipOptions, *, georeferenced: bool) -> tuple:
    """(the opened scene or None, its windows, the plain image's path or None)."""
    if georeferenced:
        scene = scenes.open_scene(path, bands=chips.bands, stretch=chips.stretch)
        return scene, _windows(scene, chips), None
    width, height = upright_size(path)
    return None, scenes.chip_windows(width, height, chip_size=chips.chip_size, overlap=chips.overlap), str(path)


def _larger_than(path: Path, chip_size: int) -> bool:
    try:
        return path.suffix.lower() in IMAGE_SUFFIXES and max(upright_size(path)) > chip_size
    except IndexerError:
        return False  # an unreadable file fails later, where every file does


MIN_GSD_WINDOW = 16  # native pixels a side, at the least, of a window cut for --gsd: one patch of the model


def _windows(scene, chips: ChipOptions) -> list[tuple]:
    size, overlap = chips.chip_size, chips.overlap
    if chips.gsd:
        native = scenes.native_gsd(scene)
        if native is None:
            raise IndexerError(f"--gsd needs a projected CRS in metres, and this scene's is {scene.crs or 'missing'}")
        # The window covers chip_size x gsd metres in native pixels; the model's resize resamples it.
        size = max(1, round(chips.chip_size * chips.gsd / native))
        if size < MIN_GSD_WINDOW:  # a few pixels blown up to a chip: nothing to embed, by the hundred thousand
            raise IndexerError(
                f"--gsd {chips.gsd:g} with --chip-size {chips.chip_size} cuts windows of {size} px of this scene's "
                f"{native:.3g} m pixels, under {MIN_GSD_WINDOW}: use a --gsd of at least "
                f"{MIN_GSD_WINDOW * native / chips.chip_size:.3g} here (its pixels are coarser than that)")
        overlap = min(size - 1, round(chips.overlap * chips.gsd / native))
    return scenes.chip_windows(scene.width, scene.height, chip_size=size, overlap=overlap)


def chip_key(scene_path, window) -> str:
    return f"{scene_path}#{','.join(str(int(v)) for v in window)}"


def _digests_or_none(path: Path) -> tuple[str, str] | None:
    try:
        return file_digests(path)
    except OSError:
        return None


def _same_content(path: Path, sha256: str | None) -> bool:
    try:
        return sha256 is not None and file_sha256(path) == sha256
    except OSError:
        return False


@contextlib.contextmanager
def hashing_scenes(store: Store, to_hash: list):
    """Hashes the scenes cut in this run (path, size, mtime) in a thread while their chips are embedded, and
    records each hash once the block ends, unless the file changed meanwhile; so a later run tells a copy under
    a new time from a change without this run reading every scene once more before the model starts."""
    hashed, stop = [], threading.Event()

    def work():
        for path, size, mtime in to_hash:
            if stop.is_set():
                return
            hashed.append((path, _digests_or_none(Path(path)), size, mtime))  # one append: safe across threads

    thread = threading.Thread(target=work, name="scene-hashes", daemon=True)
    thread.start()
    try:
        yield
        thread.join()  # done embedding: what is left to hash is all there is to do
    finally:
        stop.set()  # after an error or Ctrl-C: keep what is hashed, do not wait for the rest
        for path, digests, size, mtime in hashed[:]:
            if digests and _stat_of(path) == (size, mtime):
                store.set_scene_sha256(path, digests[0], head_sha256=digests[1])


def _stat_of(path: str):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime


def apply_plan(store: Store, plan: Plan, *, run_id: int, counts: dict) -> None:
    """Everything a plan decides before embedding: moves, removals, forgotten failures and scenes, early failures."""
    counts["skipped"], counts["scenes"], counts["moved"] = plan.skipped, plan.scenes, plan.moved
    for image_id, path, size, mtime in plan.moves:
        store.move_image(image_id, path=path, size=size, mtime=mtime)
    for old, new, size, mtime, date, georeferenced in plan.scene_moves:
        store.move_scene(old, new, size=size, mtime=mtime, date=date, dated=georeferenced)
    if plan.relocated:
        store.relocate_chips(plan.relocated)
        counts["relocated"] = len(plan.relocated)
    if plan.removed_ids:
        store.remove_images(plan.removed_ids)
        counts["removed"] = len(plan.removed_ids)
    for path in plan.forget_failures:
        store.forget_failure(path)
    for path in plan.forget_scenes:
        store.forget_scene(path)
    for record in plan.scene_records:
        store.record_scene(**record)
    for failure in plan.failures:
        record_failure(store, failure, run_id, counts)
