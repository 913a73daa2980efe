"""Crash safety: SIGKILL `lookalike index` at random moments, restart it, and compare the store with one run.

1. A tiny random DINOv3 (named *sat493m*) is saved, and a reference store is built by one uninterrupted
   `lookalike index SCENES --store REF --model M --dtype float32 --chip-size 64 --workers 0 --no-progress
   --batch-size 16` over real NAIP scenes (/work/shared/data/naip), cut into virtual chips.
2. The same command, into a second store, is started in its own process group and SIGKILLed (the whole group)
   at N random moments, restarted after each kill, and finally left to finish.
   The delays come from a seeded RNG, scaled by the measured timings (KillClock): uniform in
   [0.8 S, S + 2 R / (v k)], S = the start-up (process start to the plan: imports, model load, store open,
   planning), R = chips still missing, v = the embedding rate, k = kills left; the reference's figures
   first, then each run's. The N kills so spread over the whole job instead of landing on reruns that
   have nothing left to do.
3. The two stores are compared: same catalogue paths, one vector per live image, vectors matching
   (cosine >= 0.999), no duplicate paths, no orphans, the FAISS index consistent after `Store.open`,
   and the last run's summary covering every chip (indexed + skipped == total).

Each child runs the real CLI (`indexer.cli.main`, what the `lookalike` script calls) through this file's
`--child EVENTS` wrapper, which only appends one line to EVENTS per run id, plan and model call, so that
work redone after a kill (chips sent through the model by a killed run and never committed) is counted
exactly. A run commits each batch in one SQLite transaction; what a kill can lose is the batches in flight:
the one the model is on, those queued for the store writer (StoreWriter max_pending) and the one it writes.

    python bench/kill_harness.py --kills 20 --out bench/results/kill_harness.json
"""
import argparse
import functools
import json
import logging
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

NAIP_DIR = REPO_ROOT.parent / "shared" / "data" / "naip"
COSINE_FLOOR = 0.999
MAX_PENDING = 2  # indexer.writer.StoreWriter's default queue length
IN_FLIGHT_BATCHES = MAX_PENDING + 2  # + the batch the writer is committing + the one the model is on
CHILD_FLAG = "--child"
SUMMARY_LINE = re.compile(r"^indexed (\d+)\b.*?, skipped (\d+),", re.MULTILINE)  # what `lookalike index` prints
DIE_AT_FLAG = "--die-at"


@dataclass(frozen=True)
class Setup:
    """What is indexed, and how: the same for the reference and the killed store."""

    scenes: tuple
    model_dir: Path
    chip_size: int = 64
    batch_size: int = 16

    def index_args(self, store_dir: Path) -> list[str]:
        return ["index", *map(str, self.scenes), "--store", str(store_dir), "--model", str(self.model_dir),
                "--dtype", "float32", "--chip-size", str(self.chip_size), "--workers", "0", "--no-progress",
                "--batch-size", str(self.batch_size)]

    def command(self, store_dir: Path) -> str:
        return " ".join(["lookalike", *self.index_args(store_dir)])


@dataclass
class Run:
    """One process of `lookalike index`, killed or not."""

    number: int
    delay_s: float | None  # when the SIGKILL was due; None: left to finish
    killed: bool = False
    returncode: int | None = None
    wall_s: float = 0.0
    run_id: int | None = None  # its row in the runs table (None: killed before it opened the store)
    planned: int | None = None  # chips it set out to embed (None: killed before planning ended)
    startup_s: float | None = None  # process start to the plan
    embedded: int = 0  # chips sent through the model
    committed: int = 0  # chips whose rows it committed
    complete_after: bool = False  # every chip committed once it ended
    printed: tuple | None = None  # (indexed, skipped) of the summary line it printed, if it lived to print it
    rebuilt_index: bool = False  # it logged that it rebuilt index.faiss from the stored vectors
    phase: str = ""
    output_tail: str = ""

    @property
    def redone(self) -> int:
        """Chips it embedded that a later run embeds again (never more than were in flight at the kill)."""
        return self.embedded - self.committed


# -- the child: the real CLI, with a few lines of notes -------------------------------------------------
def child_main(events_path: str, argv: list[str]) -> None:
    """Run `lookalike ARGV`, appending 'time kind value' lines to EVENTS_PATH (one write each: kill-safe).

    `--die-at N` before ARGV: SIGKILL this process inside the store write of the N-th embedded chip, after
    its catalogue row and before its vector (a deterministic kill in the middle of a batch's transaction).
    """
    die_at = None
    if argv[:1] == [DIE_AT_FLAG]:
        die_at, argv = int(argv[1]), argv[2:]
    fd = os.open(events_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(kind, value=""):
        os.write(fd, f"{time.monotonic():.4f} {kind} {value}\n".encode())

    from indexer import pipeline
    from indexer.cli import main
    from indexer.embedder import DinoV3Embedder
    from store.store import Store

    def observed(original, before=None, after=None):
        @functools.wraps(original)  # keeps the signature: the pipeline inspects embed's keywords
        def wrapper(*args, **kwargs):
            if before:
                before(*args, **kwargs)
            result = original(*args, **kwargs)
            if after:
                after(result)
            return result
        return wrapper

    DinoV3Embedder.embed = observed(DinoV3Embedder.embed, before=lambda self, pixels, **_: note("embed", len(pixels)))
    Store.start_run = observed(Store.start_run, after=lambda run_id: note("run", run_id))
    pipeline._embed_jobs = observed(pipeline._embed_jobs, before=lambda jobs, *_, **__: note("plan", len(jobs)))
    if die_at is not None:
        import store.store as store_module

        real_vector_to_blob, encoded = store_module.vector_to_blob, [0]

        def die_at_nth(vector):  # add_embeddings encodes a row's vector right after inserting its image row
            encoded[0] += 1
            if encoded[0] == die_at:
                note("die", die_at)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_vector_to_blob(vector)

        store_module.vector_to_blob = die_at_nth
    main(argv)


def read_events(events_path: Path) -> list[tuple[float, str, str]]:
    if not events_path.exists():
        return []
    events = []
    for line in events_path.read_text().splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3:  # a kill never tears a line (one write each), but be safe
            events.append((float(parts[0]), parts[1], parts[2]))
    return events


def child_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))


def run_index(setup: Setup, store_dir: Path, events_path: Path, *, number: int, kill_after: float | None = None,
              die_at: int | None = None, timeout: float = 600) -> Run:
    """Start the index command in a new session; SIGKILL its process group after `kill_after` seconds."""
    run = Run(number=number, delay_s=None if kill_after is None else round(kill_after, 3))
    die = [DIE_AT_FLAG, str(die_at)] if die_at is not None else []
    command = [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG, str(events_path), *die,
               *setup.index_args(store_dir)]
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=timeout if kill_after is None else kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        run.killed = kill_after is not None
    run.wall_s = round(time.monotonic() - started, 3)
    run.returncode = process.returncode
    run.output_tail = (output or "")[-1500:]
    if match := SUMMARY_LINE.search(output or ""):
        run.printed = (int(match[1]), int(match[2]))
    run.rebuilt_index = "rebuilding it" in (output or "")
    for moment, kind, value in read_events(events_path):
        if kind == "run":
            run.run_id = int(value)
        elif kind == "plan":
            run.planned, run.startup_s = int(value), round(moment - started, 3)
        elif kind == "embed":
            run.embedded += int(value)
    return run


# -- reading a store --------------------------------------------------------------------------------------
def open_quietly(store_dir: Path):
    """Store.open, with the warnings it logs while loading (or rebuilding) the index collected."""
    from store import Store

    class Collect(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("store")
    logger.addHandler(handler)
    try:
        store = Store.open(store_dir)
        on_disk = index_file_ids(store_dir)  # before the index is loaded (and maybe rebuilt) in memory
        index = store.index
    finally:
        logger.removeHandler(handler)
    return store, index, on_disk, handler.messages


def index_file_ids(store_dir: Path):
    """The ids in index.faiss as the last run left it; None when it is missing or unreadable."""
    from store import faiss_index
    from store.store import INDEX_NAME

    try:
        index = faiss_index.read_index(store_dir / INDEX_NAME)
    except RuntimeError:
        return None
    return np.sort(faiss_index.require_faiss().vector_to_array(index.id_map).astype(np.int64))


def committed_count(store_dir: Path) -> int:
    from store import Store

    if not (store_dir / "catalogue.db").exists():
        return 0
    store = Store.open(store_dir)
    try:
        return store.count_images()
    finally:
        store.close()


def rows_by_path(store) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from store.vectors import blob_to_patches, blob_to_vector

    query = ("SELECT i.path, v.vector, p.grid_h, p.grid_w, p.features FROM images i "
             "JOIN vectors v ON v.image_id = i.id JOIN patches p ON p.image_id = i.id")
    return {path: (blob_to_vector(vector), blob_to_patches(features, grid_h, grid_w))
            for path, vector, grid_h, grid_w, features in store.db.execute(query)}


def scalar(store, sql: str) -> int:
    return store.db.execute(sql).fetchone()[0]


ORPHAN_QUERIES = {
    "vectors_without_image": "SELECT count(*) FROM vectors WHERE image_id NOT IN (SELECT id FROM images)",
    "patches_without_image": "SELECT count(*) FROM patches WHERE image_id NOT IN (SELECT id FROM images)",
    "images_without_vector": "SELECT count(*) FROM images WHERE id NOT IN (SELECT image_id FROM vectors)",
    "images_without_patches": "SELECT count(*) FROM images WHERE id NOT IN (SELECT image_id FROM patches)",
}


# -- the comparison ---------------------------------------------------------------------------------------
def compare_stores(reference_dir: Path, killed_dir: Path) -> dict:
    """Figures and pass/fail checks: is the killed store what one uninterrupted run would have left?"""
    reference, _, _, _ = open_quietly(reference_dir)
    killed, index, on_disk, warnings = open_quietly(killed_dir)
    try:
        ref_rows, rows = rows_by_path(reference), rows_by_path(killed)
        ref_paths = {r[0] for r in reference.db.execute("SELECT path FROM images")}
        paths = [r[0] for r in killed.db.execute("SELECT path FROM images")]
        common = sorted(set(ref_rows) & set(rows))
        cosines, deviations, patch_deviations, identical = [], [], [], 0
        for path in common:
            (a, pa), (b, pb) = ref_rows[path], rows[path]
            cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            deviations.append(float(np.abs(a - b).max()))
            patch_deviations.append(float(np.abs(pa - pb).max()))
            identical += bool(np.array_equal(a, b))
        stored_ids = killed._stored_ids()
        index_ids = np.sort(faiss_ids(index))
        orphans = {name: scalar(killed, sql) for name, sql in ORPHAN_QUERIES.items()}
        total_chips = len(ref_paths) + scalar(reference, "SELECT count(*) FROM skipped_chips")
        last_run = next(killed.db.query(
            "SELECT id, status, indexed, skipped, failed FROM runs ORDER BY id DESC LIMIT 1"), {})
        covered = (last_run.get("indexed") or 0) + (last_run.get("skipped") or 0)
        answered = self_queries(killed, stored_ids)
        pca_deviation = float(np.abs(reference.pca().components - killed.pca().components).max())
        figures = {
            "chips": total_chips,
            "images_reference": len(ref_paths),
            "images_killed": len(paths),
            "vectors_killed": scalar(killed, "SELECT count(*) FROM vectors"),
            "min_cosine": min(cosines, default=float("nan")),
            "max_abs_vector_deviation": max(deviations, default=float("nan")),
            "max_abs_patch_deviation": max(patch_deviations, default=float("nan")),
            "identical_vectors": identical,
            "max_abs_pca_deviation": pca_deviation,
            "orphans": orphans,
            "failures_recorded": scalar(killed, "SELECT count(*) FROM failures"),
            "runs_left_running": scalar(killed, "SELECT count(*) FROM runs WHERE status = 'running'"),
            "index_ntotal": int(index.ntotal),
            "index_file_as_left": "unreadable or missing" if on_disk is None else
                                  ("consistent" if np.array_equal(on_disk, stored_ids) else "out of step"),
            "open_warnings": warnings,
            "self_queries_answered": answered,
            "last_run": last_run,
        }
        checks = {
            "same_paths": set(paths) == ref_paths,
            "no_duplicate_paths": len(paths) == len(set(paths)),
            "one_vector_per_live_image": figures["vectors_killed"] == len(paths) == len(rows),
            "vectors_match": bool(common) and figures["min_cosine"] >= COSINE_FLOOR,
            "no_orphans": not any(orphans.values()),
            "no_failures": figures["failures_recorded"] == 0,
            "faiss_consistent_on_open": index.ntotal == len(stored_ids) and np.array_equal(index_ids, stored_ids),
            "searches_answer": answered == min(len(stored_ids), SELF_QUERIES),
            "last_run_covers_every_chip": last_run.get("status") == "done" and covered == total_chips,
            "same_scenes": scene_records(reference) == scene_records(killed),
        }
        return {"figures": figures, "checks": checks}
    finally:
        reference.close()
        killed.close()


SELF_QUERIES = 20


def self_queries(store, stored_ids: np.ndarray) -> int:
    """How many of a few stored vectors find their own image first (a random model can tie: count score 1)."""
    answered = 0
    for image_id in stored_ids[:: max(1, len(stored_ids) // SELF_QUERIES)][:SELF_QUERIES]:
        vector = store.vector(int(image_id))
        hits = store.search(vector / np.linalg.norm(vector), k=1)
        answered += int(bool(hits) and (hits[0]["id"] == image_id or hits[0]["score"] > 1 - 1e-5))
    return answered


def faiss_ids(index) -> np.ndarray:
    from store import faiss_index

    return faiss_index.index_ids(index.cpu)


def scene_records(store) -> list:
    return sorted(tuple(r) for r in store.db.execute("SELECT path, size, mtime, options FROM scenes"))


# -- the experiment ---------------------------------------------------------------------------------------
def default_scenes(count: int | None = None) -> tuple:
    scenes = sorted(NAIP_DIR.glob("*.tif"))
    return tuple(scenes[:count] if count else scenes)


def make_model(model_dir: Path) -> Path:
    from indexer.random_model import save_random_model

    return save_random_model(model_dir, "tiny")


@dataclass
class KillClock:
    """Draws kill delays uniform in [0.8 S, S + 2 R / (v k)], re-estimated before every kill.

    S: the median start-up seen so far (process start to the plan), R: chips still missing, v: the latest
    embedding rate (chips/s), k: kills left; seeded draws. It starts from the reference's timings. On a shared
    2-core machine the speed drifts threefold between runs, so a window fixed from the reference alone ends
    the job after a few kills and spends the rest on reruns with nothing to do; this one spreads the kills
    over the whole job (a fifth of the window falls in start-up: imports, model load, store open, planning).
    """

    seed: int
    startups: list
    rate: float  # chips/s

    @classmethod
    def from_reference(cls, reference: Run, *, seed: int) -> "KillClock":
        embedding_s = max(0.1, reference.wall_s - reference.startup_s)
        return cls(seed=seed, startups=[reference.startup_s], rate=reference.committed / embedding_s)

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def window(self, *, remaining: int, kills_left: int) -> tuple[float, float]:
        startup = statistics.median(self.startups)
        return 0.8 * startup, startup + 2 * remaining / self.rate / max(1, kills_left)

    def delay(self, *, remaining: int, kills_left: int) -> float:
        return self._rng.uniform(*self.window(remaining=remaining, kills_left=kills_left))

    def learn(self, run: Run, *, batch_size: int) -> None:
        if run.startup_s is None:
            return
        self.startups.append(run.startup_s)
        if run.embedded >= batch_size and run.wall_s > run.startup_s:
            self.rate = run.embedded / (run.wall_s - run.startup_s)


def build_reference(setup: Setup, work_dir: Path, *, timeout: float = 600) -> Run:
    """One uninterrupted run into work_dir/reference; its timings start the kill clock."""
    events_dir = Path(work_dir) / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    reference_dir = Path(work_dir) / "reference"
    reference = run_index(setup, reference_dir, events_dir / "reference.log", number=0, timeout=timeout)
    if reference.returncode != 0 or reference.startup_s is None:
        raise RuntimeError(f"the reference run failed ({reference.returncode}):\n{reference.output_tail}")
    reference.committed = reference.embedded = committed_count(reference_dir)
    return reference


def kill_and_resume(setup: Setup, work_dir: Path, reference: Run, *, kills: int = 0, seed: int = 0,
                    die_at: int | None = None, name: str = "killed", timeout: float = 600) -> dict:
    """Run into work_dir/NAME `kills` times, each SIGKILLed at a random moment; once more to the end; compare.

    `die_at` adds a first run that kills itself inside the write of that chip (see child_main).
    """
    work_dir = Path(work_dir)
    store_dir, events_dir = work_dir / name, work_dir / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    clock = KillClock.from_reference(reference, seed=seed)
    schedule = (["die"] if die_at is not None else []) + ["kill"] * kills + ["finish"]
    runs, total = [], reference.committed
    for number, kind in enumerate(schedule, start=1):
        before = committed_count(store_dir)
        kills_left = schedule[number - 1:].count("kill")
        delay = clock.delay(remaining=total - before, kills_left=kills_left) if kind == "kill" else None
        run = run_index(setup, store_dir, events_dir / f"{name}-{number:02d}.log", number=number, kill_after=delay,
                        die_at=die_at if kind == "die" else None, timeout=timeout)
        run.killed = run.killed or (kind == "die" and run.returncode == -signal.SIGKILL)
        run.complete_after = committed_count(store_dir) >= total
        run.phase = phase_of(run, complete_before=before >= total)
        clock.learn(run, batch_size=setup.batch_size)
        runs.append(run)
    attribute_commits(store_dir, runs)
    comparison = compare_stores(work_dir / "reference", store_dir)
    delays = [r.delay_s for r in runs if r.delay_s is not None]
    return {"summary": summarise(setup, reference, runs, comparison, kills=len(schedule) - 1),
            "comparison": comparison, "reference": asdict(reference),
            "runs": [dict(asdict(r), redone=r.redone) for r in runs], "seed": seed,
            "delay_range_s": [min(delays), max(delays)] if delays else None}


def run_experiment(setup: Setup, work_dir: Path, *, kills: int, seed: int = 0, timeout: float = 600) -> dict:
    """Reference run, N killed runs and a final one, then the comparison; everything lands in the result."""
    started = time.monotonic()
    reference = build_reference(setup, work_dir, timeout=timeout)
    result = kill_and_resume(setup, work_dir, reference, kills=kills, seed=seed, timeout=timeout)
    result["summary"]["runtime_s"] = round(time.monotonic() - started, 1)
    return result


def phase_of(run: Run, *, complete_before: bool) -> str:
    if not run.killed:
        return "finished" if run.delay_s is None else "finished before the kill"
    if complete_before:
        return "killed after completion"
    if run.planned is None:
        return "killed in start-up"  # imports, model load, store open (maybe an index rebuild), planning
    return "killed while embedding" if not run.complete_after else "killed while finishing"


def attribute_commits(killed_dir: Path, runs: list[Run]) -> None:
    from store import Store

    store = Store.open(killed_dir)
    try:
        by_run = dict(store.db.execute("SELECT run_id, count(*) FROM images GROUP BY run_id").fetchall())
    finally:
        store.close()
    for run in runs:
        run.committed = by_run.get(run.run_id, 0) if run.run_id is not None else 0


def summarise(setup: Setup, reference: Run, runs: list[Run], comparison: dict, *, kills: int) -> dict:
    killed = [r for r in runs if r.killed]
    mid_run = [r for r in killed if r.phase != "killed after completion"]
    redone = [r.redone for r in runs]
    problems = [f"run {r.number} exited {r.returncode}: {r.output_tail[-300:]}"
                for r in runs if not r.killed and r.returncode != 0]
    in_flight = IN_FLIGHT_BATCHES * setup.batch_size
    checks = dict(comparison["checks"],
                  restarts_clean=not problems,
                  redo_within_batches_in_flight=all(r.redone <= in_flight for r in runs),
                  no_chip_committed_twice=sum(r.committed for r in runs) == comparison["figures"]["images_killed"],
                  printed_summary_covers_every_chip=sum(runs[-1].printed or ()) == comparison["figures"]["chips"])
    return {
        "kills_due": kills,
        "kills_landed": len(killed),
        "kills_mid_run": len(mid_run),
        "kills_after_completion": kills - len(mid_run),
        "phases": {phase: sum(r.phase == phase for r in runs) for phase in sorted({r.phase for r in runs})},
        "chips": comparison["figures"]["chips"],
        "scenes": len(setup.scenes),
        "chip_size": setup.chip_size,
        "batch_size": setup.batch_size,
        "processes": len(runs),
        "restarts_that_rebuilt_the_index": sum(r.rebuilt_index for r in runs),
        "chips_embedded_all_runs": sum(r.embedded for r in runs),
        "chips_redone": sum(redone),
        "batches_redone": sum(math.ceil(r / setup.batch_size) for r in redone if r > 0),
        "max_redone_per_kill": max(redone, default=0),
        "redo_bound_per_kill": in_flight,
        "max_abs_vector_deviation": comparison["figures"]["max_abs_vector_deviation"],
        "min_cosine": comparison["figures"]["min_cosine"],
        "identical_vectors": comparison["figures"]["identical_vectors"],
        "reference_wall_s": reference.wall_s,
        "reference_startup_s": reference.startup_s,
        "problems": problems,
        "checks": checks,
        "passed": all(checks.values()),
    }


# -- the report -------------------------------------------------------------------------------------------
def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{platform.node()}: {os.cpu_count()}-core VM, {cpu}, {memory:.1f} GiB RAM, "
            f"Python {platform.python_version()}")


def markdown(result: dict) -> str:
    s, f = result["summary"], result["comparison"]["figures"]
    lines = [
        "# Crash safety: SIGKILL and resume",
        "",
        f"- command: `{result['command']}`",
        f"- indexed: `{result['index_command']}` (reference: the same into another store, uninterrupted)",
        f"- machine: {result['machine']}; date {result['date']}; total runtime {s['runtime_s']} s",
        f"- {s['scenes']} NAIP scenes cut into {s['chips']} chips of {s['chip_size']} px, batch {s['batch_size']}, "
        f"tiny random DINOv3, float32, CPU; seed {result['seed']}; kill delays {result['delay_range_s'][0]}–"
        f"{result['delay_range_s'][1]} s, uniform in [0.8 S, S + 2 R / (v k)] (S: start-up, R: chips missing, "
        f"v: the last run's chips/s, k: kills left; see KillClock); reference run: {s['reference_wall_s']} s, "
        f"start-up {s['reference_startup_s']} s",
        "",
        "| kills | mid-run | after completion | chips | processes | chips redone (batches) | max redone / kill "
        "(bound) | min cosine | max abs vector dev. | identical vectors | all checks |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {s['kills_landed']} / {s['kills_due']} | {s['kills_mid_run']} | {s['kills_after_completion']} | "
        f"{s['chips']} | {s['processes']} | {s['chips_redone']} ({s['batches_redone']}) | "
        f"{s['max_redone_per_kill']} ({s['redo_bound_per_kill']}) | {s['min_cosine']:.6f} | "
        f"{s['max_abs_vector_deviation']:.2e} | {s['identical_vectors']} / {f['images_reference']} | "
        f"{'pass' if s['passed'] else 'FAIL'} |",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in s["checks"].items()],
        "",
        f"Phases: {', '.join(f'{k}: {v}' for k, v in s['phases'].items())}. Restarts that found index.faiss "
        f"out of step and rebuilt it from the stored vectors: {s['restarts_that_rebuilt_the_index']}. "
        f"Last run printed: indexed + skipped = {sum(result['runs'][-1]['printed'] or ())}. "
        f"Index file as the last run left it: "
        f"{f['index_file_as_left']}; warnings on open: {f['open_warnings'] or 'none'}; killed runs left with "
        f"status 'running': {f['runs_left_running']}.",
        "",
        "| run | delay s | phase | wall s | index rebuilt | planned | embedded | committed | redone |",
        "|---:|---:|---|---:|---|---:|---:|---:|---:|",
        *[f"| {r['number']} | {r['delay_s'] if r['delay_s'] is not None else '-'} | {r['phase']} | {r['wall_s']} | "
          f"{'yes' if r['rebuilt_index'] else ''} | {'-' if r['planned'] is None else r['planned']} | "
          f"{r['embedded']} | {r['committed']} | {r['redone']} |" for r in result["runs"]],
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--scenes", type=int, default=None, help="How many NAIP scenes (default: all).")
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "kill_harness.json")
    parser.add_argument("--keep", type=Path, default=None, help="Work here and keep the stores (default: a temp dir).")
    args = parser.parse_args(argv)

    work_dir = args.keep or Path(tempfile.mkdtemp(prefix="kill-harness-"))
    try:
        model_dir = make_model(work_dir / "tiny-dinov3-sat493m")
        setup = Setup(scenes=default_scenes(args.scenes), model_dir=model_dir, chip_size=args.chip_size,
                      batch_size=args.batch_size)
        result = run_experiment(setup, work_dir, kills=args.kills, seed=args.seed)
    finally:
        if args.keep is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    result["command"] = "python bench/kill_harness.py " + " ".join(argv if argv is not None else sys.argv[1:])
    result["index_command"] = setup.command(Path("KILLED"))
    result["machine"] = machine()
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["summary"]["passed"] else 1


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == CHILD_FLAG:
        child_main(sys.argv[2], sys.argv[3:])
    else:
        sys.exit(main())
