"""The `lookalike` command line, end to end with CliRunner, and once as the installed console script."""
import json
import os
import shutil
import subprocess
import sys
import warnings

import click
import pytest
from click.testing import CliRunner

from helpers import copy_chips
from indexer.cli import cli

RUN = ["--dtype", "float32", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    """Exit status 1, one 'Error:' sentence on stderr, no traceback."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def assert_usage_error(result, *fragments):
    """click's usage error: exit status 2, the usage line, one 'Error:' sentence, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.stderr and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`random-model` then `index --json` once for the module; returns (chips_dir, model_dir, store_dir, summary)."""
    root = tmp_path_factory.mktemp("cli")
    model_dir = root / "cli-tiny-dinov3-sat493m"
    made = invoke("random-model", model_dir)
    assert made.exit_code == 0, made.output
    assert str(model_dir) in made.stdout
    chips_dir = copy_chips(root / "chips")
    store_dir = root / "store"
    result = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN,
                    "--workers", "0", "--no-progress", "--json")
    assert result.exit_code == 0, result.output
    return chips_dir, model_dir, store_dir, json.loads(result.stdout)


def test_random_model_writes_a_loadable_checkpoint(built):
    _, model_dir, _, _ = built
    assert (model_dir / "config.json").is_file()
    assert (model_dir / "model.safetensors").is_file()
    assert json.loads((model_dir / "config.json").read_text())["model_type"] == "dinov3_vit"


def test_index_json(built):
    summary = built[3]
    assert {"indexed", "skipped", "removed", "failed", "seconds", "images_per_second"} <= summary.keys()
    assert (summary["indexed"], summary["skipped"], summary["removed"], summary["failed"]) == (12, 0, 0, 0)


def test_index_text_and_rerun(built, tmp_path):
    chips_dir, model_dir, _, _ = built
    store_dir = tmp_path / "store"
    args = ["index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN, "--workers", "0", "--no-progress"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert "indexed 12, skipped 0" in first.stdout
    second = invoke(*args)
    assert "indexed 0, skipped 12, removed 0, failed 0" in second.stdout


def test_store_from_the_environment(built, monkeypatch):
    monkeypatch.setenv("LOOKALIKE_STORE", str(built[2]))
    result = invoke("info", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["images"] == 12


def test_search_by_id_json(built):
    store_dir = built[2]
    result = invoke("search", "--id", 3, "--store", store_dir, "-k", 4, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["query"]["id"] == 3
    assert len(answer["results"]) == 4
    for hit in answer["results"]:
        assert {"rank", "id", "path", "score"} <= hit.keys()
    assert answer["results"][0]["id"] == 3
    assert answer["results"][0]["score"] >= 0.999
    assert [hit["rank"] for hit in answer["results"]] == [1, 2, 3, 4]


def test_search_by_image_json(built):
    chips_dir, _, store_dir, _ = built
    query = sorted(chips_dir.glob("*.jpg"))[7].absolute()
    result = invoke("search", query, "--store", store_dir, "-k", 3, "--json", *RUN)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["query"]["path"] == str(query)
    assert answer["results"][0]["path"] == str(query)
    assert answer["results"][0]["score"] >= 0.999


def test_search_text_output(built):
    result = invoke("search", "--id", 1, "--store", built[2], "-k", 2)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert "id=1 " in lines[0]


def test_info_json(built):
    result = invoke("info", "--store", built[2], "--json")
    assert result.exit_code == 0, result.output
    details = json.loads(result.stdout)
    assert {"images", "failed", "model", "dim", "dtype", "resolution", "normalization", "pooling",
            "index"} <= details.keys()
    assert (details["images"], details["failed"], details["dim"]) == (12, 0, 32)
    assert (details["dtype"], details["resolution"], details["pooling"]) == ("float32", 224, "cls")
    assert details["normalization"]["name"] == "sat493m"
    assert details["model"] == str(built[1].absolute())
    assert "12" in json.dumps(details["index"])


def test_info_text(built):
    result = invoke("info", "--store", built[2])
    assert result.exit_code == 0, result.output
    assert "images: 12" in result.stdout


# -- errors: one line, exit status 1, no traceback ---------------------------------------------
def test_missing_store(tmp_path):
    assert_one_line_error(invoke("info", "--store", tmp_path / "missing"), "no lookalike store", "lookalike index")
    assert_one_line_error(invoke("search", "--id", 1, "--store", tmp_path / "missing"), "no lookalike store")
    assert not (tmp_path / "missing").exists()


def test_unknown_id(built):
    assert_one_line_error(invoke("search", "--id", 999, "--store", built[2]), "999")


def test_unreadable_query_image(built, tmp_path):
    bad = tmp_path / "query.jpg"
    bad.write_text("not an image")
    assert_one_line_error(invoke("search", bad, "--store", built[2], *RUN), "not an image format lookalike reads")


def test_missing_query_image(built, tmp_path):
    assert_one_line_error(invoke("search", tmp_path / "nope.jpg", "--store", built[2], *RUN), "does not exist")


def test_model_that_cannot_be_loaded(built, tmp_path):
    result = invoke("index", built[0], "--store", tmp_path / "store", "--model", "nobody/no-such-dinov3-model",
                    *RUN, "--workers", "0", "--no-progress")
    assert_one_line_error(result, "no-such-dinov3-model", "--model")


def test_provenance_mismatch(built):
    chips_dir, model_dir, store_dir, _ = built
    result = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN, "--resolution", 256,
                    "--workers", "0", "--no-progress")
    assert_one_line_error(result, "resolution", "--rebuild")


def test_mismatch_is_refused_before_the_model_loads(built):
    chips_dir, _, store_dir, _ = built
    result = invoke("index", chips_dir, "--store", store_dir, "--model", "nobody/no-such-dinov3-model", *RUN,
                    "--pooling", "mean", "--workers", "0", "--no-progress")
    assert_one_line_error(result, "pooling", "--rebuild")


def test_bad_normalization(built, tmp_path):
    result = invoke("index", built[0], "--store", tmp_path / "store", "--model", built[1], *RUN,
                    "--normalization", "1,2/3", "--workers", "0", "--no-progress")
    assert_usage_error(result, "--normalization", "'1,2/3' is not one of")  # malformed: a usage error (README)


@pytest.mark.parametrize("command", [["index", "CHIPS", "--dry-run"], ["index", "CHIPS"], ["rebuild"]])
@pytest.mark.parametrize("option", [["--resolution", "200"], ["--normalization", "foo"]])
def test_a_malformed_resolution_or_normalization_is_a_usage_error_dry_run_too(built, tmp_path, command, option):
    chips_dir, model_dir, store_dir, _ = built
    args = [str(chips_dir) if part == "CHIPS" else part for part in command]
    store = tmp_path / "new" if command[0] == "index" else store_dir
    result = invoke(*args, "--store", store, "--model", model_dir, *RUN, *option)
    assert_usage_error(result, option[0], "multiple of 16" if option[0] == "--resolution" else "'foo' is not one of")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("args", [[], ["IMAGE", "--exclude-query"], ["IMAGE", "--exclude-scene"]],
                         ids=["neither", "exclude-query-without-id", "exclude-scene-without-id"])
def test_search_needs_a_query_and_id_flags_need_an_id(built, args):
    chips_dir, _, store_dir, _ = built
    args = [str(next(chips_dir.glob("*.jpg"))) if a == "IMAGE" else a for a in args]
    result = invoke("search", *args, "--store", store_dir)
    assert result.exit_code == 2
    assert "Usage" in result.output
    assert "Traceback" not in result.output


def test_several_examples_search_their_mean_direction(built):
    from store import Store

    store_dir = built[2]
    result = invoke("search", "--id", 2, "--id", 5, "--id", 9, "--store", store_dir, "-k", 12, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert [example["id"] for example in answer["query"]["examples"]] == [2, 5, 9]
    assert answer["query"]["combine"] == "mean"
    store = Store.open(store_dir)
    centre = sum(store.vector(i) for i in (2, 5, 9))
    centre /= (centre ** 2).sum() ** 0.5
    expected = sorted(range(1, 13), key=lambda i: -float(store.vector(i) @ centre))
    assert [hit["id"] for hit in answer["results"]] == expected
    for hit in answer["results"]:
        assert hit["score"] == pytest.approx(float(store.vector(hit["id"]) @ centre), abs=1e-5)
    left_out = invoke("search", "--id", 2, "--id", 5, "--id", 9, "--store", store_dir, "-k", 12, "--json",
                      "--exclude-query")
    assert [hit["id"] for hit in json.loads(left_out.stdout)["results"]] == [i for i in expected if i not in (2, 5, 9)]


def test_a_file_and_an_id_ranked_by_the_best_of_either(built):
    chips_dir, _, store_dir, _ = built
    query = sorted(chips_dir.glob("*.jpg"))[7].absolute()
    result = invoke("search", query, "--id", 3, "--combine", "any", "--store", store_dir, "-k", 3, "--json", *RUN)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    id_path = answer["query"]["examples"][1]["path"]
    assert answer["query"] == {"examples": [{"path": str(query)}, {"id": 3, "path": id_path}], "combine": "any"}
    top_two = answer["results"][:2]
    assert {hit["path"] for hit in top_two} == {str(query), answer["query"]["examples"][1]["path"]}
    assert all(hit["score"] >= 0.999 for hit in top_two)  # each example finds itself
    assert answer["results"][2]["score"] < 0.999


def test_each_query_answered_on_its_own_with_one_model_load(built, tmp_path):
    chips_dir, _, store_dir, _ = built
    (tmp_path / "not-a-picture.jpg").write_bytes(b"plain text")
    listed = tmp_path / "queries.txt"
    listed.write_text("not-a-picture.jpg\n")
    result = invoke("search", "--each", chips_dir, listed, "--id", 3, "--id", 9999, "--store", store_dir, "-k", 2,
                    "--exclude-query", "--json", *RUN)
    assert result.exit_code == 1
    assert "2 of 15 queries could not be answered" in result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    files = sorted(chips_dir.glob("*.jpg"))
    assert [a["query"].get("path") for a in answers[:13]] == [str(f.absolute()) for f in files] + [
        str(tmp_path / "not-a-picture.jpg")]
    for answer in answers[:12]:  # each chip finds itself first, scored as a search of it alone would be
        assert answer["results"][0]["path"] == answer["query"]["path"]
        assert answer["results"][0]["score"] >= 0.999
    alone = json.loads(invoke("search", files[5], "--store", store_dir, "-k", 2, "--json", *RUN).stdout)["results"]
    assert [(h["id"], round(h["score"], 5)) for h in answers[5]["results"]] == [(h["id"], round(h["score"], 5))
                                                                                 for h in alone]
    assert "not an image" in answers[12]["error"]
    assert answers[13]["query"]["id"] == 3 and 3 not in [h["id"] for h in answers[13]["results"]]  # --exclude-query
    assert answers[14] == {"query": {"id": 9999}, "error": f"no image with id 9999 in the store at {store_dir}"}


def test_each_answers_a_missing_file_with_its_error_in_its_place(built, tmp_path):
    chips_dir, _, store_dir, _ = built
    files = sorted(chips_dir.glob("*.jpg"))[:2]
    missing = tmp_path / "gone.jpg"
    result = invoke("search", "--each", files[0], missing, files[1], "--store", store_dir, "-k", 1, "--json", *RUN)
    assert result.exit_code == 1
    assert "1 of 3 queries could not be answered" in result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["query"]["path"] for a in answers] == [str(files[0].absolute()), str(missing), str(files[1].absolute())]
    assert answers[1]["error"] == f"{missing}: cannot be read (No such file or directory)"
    assert answers[0]["results"][0]["path"] == str(files[0].absolute())
    assert answers[2]["results"][0]["path"] == str(files[1].absolute())


def test_each_batches_images_as_one_at_a_time_would(built):
    from indexer import api

    chips_dir, model_dir, store_dir, _ = built
    store = api.open_store(store_dir)
    embedder = api.load_embedder(store, model=str(model_dir), device="cpu", dtype="float32")
    files = sorted(chips_dir.glob("*.jpg"))
    batched = list(api.search_each(store, files, k=3, embedder=embedder, batch_size=5))  # 5 + 5 + 2
    for path, answer in zip(files, batched):
        alone = api.search(store, path, k=3, embedder=embedder)["results"]
        assert [h["id"] for h in answer["results"]] == [h["id"] for h in alone]
        assert [h["score"] for h in answer["results"]] == pytest.approx([h["score"] for h in alone], abs=1e-5)


def test_each_over_a_folder_without_images_says_so(built, tmp_path):
    (tmp_path / "nothing").mkdir()
    assert_one_line_error(invoke("search", "--each", tmp_path / "nothing", "--store", built[2]),
                          "no image files to query with")


def test_each_refuses_geojson(built, tmp_path):
    result = invoke("search", "--each", "--id", 1, "--store", built[2], "--geojson", tmp_path / "x.geojson")
    assert result.exit_code == 2 and "--each" in result.output


def test_a_reader_that_goes_away_ends_the_command_quietly(built):
    """`lookalike search ... | head -1`: the closed pipe is not reported as an error, nor as a traceback."""
    ids = [arg for _ in range(60) for arg in ("--id", "1")]  # ~200 KB of answers: more than a pipe holds
    process = subprocess.Popen([sys.executable, "-m", "indexer.cli", "search", "--each", *ids, "--store", str(built[2]),
                                "-k", "12", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert json.loads(process.stdout.readline())["query"]["id"] == 1
    process.stdout.close()
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert b"Broken pipe" not in stderr and b"Traceback" not in stderr and b"Exception ignored" not in stderr, stderr


def test_the_api_refuses_no_examples_and_an_unknown_combination_before_any_model_loads(built):
    from indexer import api
    from indexer.errors import IndexerError

    store = api.open_store(built[2])
    with pytest.raises(IndexerError, match="no query"):
        api.search(store, [], k=3)
    with pytest.raises(IndexerError, match="not one of mean, any"):
        api.search(store, ["no-such-file.jpg", 3], k=3, combine="median")


# -- documentation ------------------------------------------------------------------------------
def test_every_command_has_help_with_an_example():
    assert {"index", "search", "info", "random-model"} <= set(cli.commands)
    for name, command in cli.commands.items():
        assert command.help and "Example:" in command.help, name
        result = invoke(name, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.stdout, name


def test_group_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.stdout


# -- the installed console script -----------------------------------------------------------------
def test_console_script_reports_a_missing_store(tmp_path):
    script = shutil.which("lookalike")
    if script is None:  # fall back to the same entry point when the venv's bin is not on PATH
        exe = os.path.join(os.path.dirname(sys.executable), "lookalike")
        command = [exe] if os.path.exists(exe) else [sys.executable, "-m", "indexer.cli"]
    else:
        command = [script]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("LOOKALIKE_STORE", None)
    done = subprocess.run([*command, "info", "--store", str(tmp_path / "missing")], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert done.stderr.startswith("Error: no lookalike store")
    assert done.stdout == ""


def test_batch_size_auto_is_the_default_and_means_16_on_a_cpu(built):
    from store import Store

    store = Store.open(built[2])
    settings = json.loads(store.db.execute("SELECT settings FROM runs ORDER BY id LIMIT 1").fetchone()[0])
    assert settings["batch_size"] == 16


@pytest.mark.parametrize("value", ["0", "lots", "5000"])
def test_a_bad_batch_size_is_refused_before_anything_loads(built, tmp_path, value):
    result = invoke("index", built[0], "--store", tmp_path / "s", "--batch-size", value)
    assert result.exit_code == 2 and "--batch-size" in result.output and "Traceback" not in result.output


def test_the_batch_probe_takes_the_largest_power_of_two_that_fits():
    from indexer.embedder import largest_fitting

    tried = []

    def fits(size):
        tried.append(size)
        return size <= 40  # e.g. 48 images would run out of memory

    assert largest_fitting(fits, largest=128) == 32
    assert tried == [1, 2, 4, 8, 16, 32, 64]
    assert largest_fitting(lambda size: True, largest=128) == 128
    assert largest_fitting(lambda size: False, largest=128) == 1  # one image is always tried by the run itself


def test_the_batch_probe_keeps_a_batch_to_about_as_many_tokens_as_128_images_at_224_px():
    from indexer.embedder import token_cap

    assert token_cap(1 + 4 + 14 * 14) == 128  # 224 px: the 7B's best batch (bench/results/gpu)
    assert token_cap(1 + 4 + 32 * 32) == 16  # 512 px: 1,029 tokens an image
    assert token_cap(1 + 4 + 28 * 28) == 32  # 448 px
    assert token_cap(1 + 4 + 256 * 256) == 1  # a huge input: still one image


# -- failures ------------------------------------------------------------------------------------
def test_failures_are_summarised_with_an_example_and_listed(built, tmp_path):
    chips_dir, model_dir, _, _ = built
    sources = tmp_path / "sources"
    shutil.copytree(chips_dir, sources)
    (sources / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a JPEG")
    (sources / "empty.png").write_bytes(b"")
    store_dir = tmp_path / "store"
    result = invoke("index", sources, "--store", store_dir, "--model", model_dir, *RUN, "--workers", "0",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert "indexed 12, skipped 0, removed 0, failed 2" in result.stdout
    failed_lines = [line for line in result.stdout.splitlines() if line.startswith("  failed: ")]
    assert failed_lines and all(", e.g. " in line and str(sources) in line for line in failed_lines)
    assert f"lookalike failures --store {store_dir}" in result.stdout

    listed = invoke("failures", "--store", store_dir)
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert sorted(line.split(": ", 1)[0] for line in lines) == [str(sources / "broken.jpg"), str(sources / "empty.png")]
    assert all(len(line.split(": ", 1)[1]) > 5 for line in lines)  # a reason follows each path
    assert f"lookalike index SOURCE... --store {store_dir} --retry-failed" in listed.stderr
    assert "a file that failed is not tried again until it changes" in listed.stderr  # neither was refused a read
    assert "refused" not in listed.stderr

    info = invoke("info", "--store", store_dir)
    assert f"failed: 2 (lookalike failures --store {store_dir} says why)" in info.stdout
    one = invoke("failures", "--store", store_dir, "--limit", 1)
    assert one.stdout.splitlines()[1] == "… and 1 more (--limit, or --json for all)"
    answer = json.loads(invoke("failures", "--store", store_dir, "--json").stdout)
    assert answer["failed"] == 2 and len(answer["failures"]) == 2
    assert {"path", "reason", "size", "mtime", "run_id", "at"} <= answer["failures"][0].keys()


def test_failures_of_a_clean_store_and_of_no_store(built, tmp_path):
    assert invoke("failures", "--store", built[2]).stdout == "no failures recorded\n"
    assert_one_line_error(invoke("failures", "--store", tmp_path / "nowhere"), "no lookalike store")


def test_a_geojson_path_that_cannot_be_written_is_one_line(built, tmp_path):
    store_dir = built[2]
    missing = invoke("search", "--id", 1, "--store", store_dir, "--geojson", tmp_path / "no-such-folder" / "hits.geojson")
    assert missing.exit_code == 2 and "cannot write into" in missing.stderr and "Traceback" not in missing.output
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    result = invoke("search", "--id", 1, "--store", store_dir, "--geojson", a_file / "hits.geojson")
    assert_one_line_error(result, f"cannot write {a_file / 'hits.geojson'}")


def test_file_system_refusals_are_one_line(built, tmp_path):
    chips_dir, model_dir, _, _ = built
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    result = invoke("index", chips_dir, "--store", a_file / "store", "--model", model_dir, *RUN, "--workers", "0")
    assert_one_line_error(result, "Not a directory", str(a_file / "store"))
    result = invoke("random-model", a_file / "model")
    assert_one_line_error(result, "Not a directory")
    refused = invoke("random-model", a_file)
    assert refused.exit_code == 2 and "is a file, not a folder" in refused.stderr
    assert a_file.read_text() == "keep me"


def test_serve_refuses_a_busy_port_and_a_foreign_host_in_one_line(built):
    import socket

    store_dir = built[2]
    with socket.socket() as listener:  # something already listening, as a second `serve` would find it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = invoke("serve", "--store", store_dir, "--port", port)
    assert_one_line_error(result, f"cannot serve on 127.0.0.1:{port}", "pick another --port")
    foreign = invoke("serve", "--store", store_dir, "--host", "192.0.2.1")  # TEST-NET-1: never this machine's
    assert foreign.exit_code == 2 and "cannot listen on 192.0.2.1" in foreign.stderr


def test_a_crop_of_the_query_finds_what_it_cuts_out(built, tmp_path):
    from PIL import Image

    chips_dir, _, store_dir, _ = built
    left, right = sorted(chips_dir.glob("*.jpg"))[2:4]
    pair = Image.new("RGB", (256, 128))
    for offset, chip in ((0, left), (128, right)):
        with Image.open(chip) as picture:
            pair.paste(picture.convert("RGB"), (offset, 0))
    pair.save(tmp_path / "pair.png")  # lossless: each half is exactly its chip's decoded pixels
    for crop, wanted in (("0,0,128,128", left), ("128,0,128,128", right)):
        result = invoke("search", tmp_path / "pair.png", "--crop", crop, "--store", store_dir, "-k", 1, "--json", *RUN)
        assert result.exit_code == 0, result.output
        answer = json.loads(result.stdout)
        (hit,) = answer["results"]
        assert hit["path"] == str(wanted.absolute()) and hit["score"] >= 0.999
        assert answer["query"] == {"path": str(tmp_path / "pair.png"), "crop": [int(v) for v in crop.split(",")]}
    each = invoke("search", "--each", tmp_path / "pair.png", "--crop", "128,0,128,128", "--store", store_dir, "-k", 1,
                  "--json", *RUN)
    assert json.loads(each.stdout)["query"]["crop"] == [128, 0, 128, 128], each.output
    outside = invoke("search", tmp_path / "pair.png", "--crop", "200,0,128,128", "--store", store_dir, "--model",
                     "nobody/no-such-model", *RUN)  # refused before any model is looked for
    assert_one_line_error(outside, "does not fit in", "256×128 px")
    each_id = invoke("search", "--each", "--id", 1, "--crop", "0,0,8,8", "--store", store_dir)
    assert each_id.exit_code == 2 and "--crop" in each_id.output


def test_a_crop_of_an_indexed_image_searches_that_part(built):
    from PIL import Image

    from indexer import api

    chips_dir, _, store_dir, _ = built
    store = api.open_store(store_dir)
    image_id = store.image_id_for_path(str(sorted(chips_dir.glob("*.jpg"))[3].absolute()))
    row = store.image(image_id)
    with Image.open(row["path"]) as picture:
        part = picture.convert("RGB").crop((16, 32, 16 + 80, 32 + 64))
    expected = api.search(store, part, k=5, embedder=api.load_embedder(store, device="cpu", dtype="float32"))
    store.close()
    result = invoke("search", "--id", image_id, "--crop", "16,32,80,64", "--store", store_dir, "-k", 5, "--json", *RUN)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["query"]["id"] == image_id and answer["query"]["crop"] == [16, 32, 80, 64]
    assert [(h["id"], round(h["score"], 5)) for h in answer["results"]] == \
        [(h["id"], round(h["score"], 5)) for h in expected["results"]]
    assert answer["results"][0]["score"] < 0.9999  # a part, not the whole picture
    left_out = invoke("search", "--id", image_id, "--crop", "16,32,80,64", "--store", store_dir, "--exclude-query",
                      "--json", *RUN)
    assert image_id not in [h["id"] for h in json.loads(left_out.stdout)["results"]]
    outside = invoke("search", "--id", image_id, "--crop", "100,0,64,64", "--store", store_dir, "--model",
                     "nobody/no-such-model", *RUN)  # refused before any model is looked for
    assert_one_line_error(outside, "does not fit in", "128×128 px")


def test_each_splits_a_batch_the_device_cannot_hold(built):
    import torch

    from indexer import api

    chips_dir, model_dir, store_dir, _ = built
    store = api.open_store(store_dir)
    embedder = api.load_embedder(store, model=str(model_dir), device="cpu", dtype="float32")
    sizes = []

    class SmallDevice:  # the real embedder, on a device that holds at most 3 images at a time
        preprocess = embedder.preprocess

        def embed(self, pixels, **options):
            sizes.append(len(pixels))
            if len(pixels) > 3:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return embedder.embed(pixels, **options)

    files = sorted(chips_dir.glob("*.jpg"))[:10]
    answers = list(api.search_each(store, files, k=1, embedder=SmallDevice(), batch_size=10))
    assert [a["results"][0]["path"] for a in answers] == [str(f.absolute()) for f in files]  # each finds itself
    assert sizes[0] == 10 and max(sizes[1:]) <= 5 and sum(s for s in sizes if s <= 3) == 10


def test_unlike_moves_the_query_away_and_leaves_those_images_out(built, tmp_path):
    from indexer import api

    chips_dir, _, store_dir, _ = built
    store = api.open_store(store_dir)
    paths = sorted(chips_dir.glob("*.jpg"))
    query = store.image_id_for_path(str(paths[0].absolute()))
    avoided_id = api.search(store, query, k=2)["results"][1]["id"]
    expected = api.search(store, query, k=4, unlike=[avoided_id, paths[5]], unlike_weight=0.4,
                          embedder=api.load_embedder(store, device="cpu", dtype="float32"))
    store.close()
    result = invoke("search", "--id", query, "--unlike-id", avoided_id, "--unlike", paths[5], "--unlike-weight", 0.4,
                    "--store", store_dir, "-k", 4, "--json", *RUN)
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert [hit["id"] for hit in answer["results"]] == [hit["id"] for hit in expected["results"]]
    assert avoided_id not in [hit["id"] for hit in answer["results"]]
    assert answer["query"]["unlike"][0] == {"path": str(paths[5])}  # the files first, then the ids
    assert answer["query"]["unlike"][1]["id"] == avoided_id
    assert answer["query"]["unlike_weight"] == 0.4 and answer["query"]["examples"][0]["id"] == query
    heavy = invoke("search", "--id", query, "--unlike-id", avoided_id, "--unlike-weight", 2, "--store", store_dir)
    assert heavy.exit_code == 2 and "--unlike-weight" in heavy.output
    unknown = invoke("search", "--id", query, "--unlike-id", 99999, "--store", store_dir, "--model",
                     "nobody/no-such-model")
    assert_one_line_error(unknown, "no image with id 99999")
    missing = invoke("search", "--id", query, "--unlike", tmp_path / "nothing.jpg", "--store", store_dir, "--model",
                     "nobody/no-such-model")  # refused before any model is looked for
    assert_one_line_error(missing, "--unlike image", "nothing.jpg", "does not exist")


def test_each_moves_every_query_away_from_the_same_unlike(built):
    from indexer import api

    chips_dir, _, store_dir, _ = built
    store = api.open_store(store_dir)
    paths = sorted(chips_dir.glob("*.jpg"))
    queries = [store.image_id_for_path(str(paths[0].absolute())), store.image_id_for_path(str(paths[9].absolute()))]
    avoided_id = api.search(store, queries[0], k=2)["results"][1]["id"]
    embedder = api.load_embedder(store, device="cpu", dtype="float32")
    expected = [api.search(store, query, k=4, unlike=[avoided_id, paths[5]], unlike_weight=0.4, embedder=embedder)
                for query in queries]
    store.close()
    result = invoke("search", "--each", "--id", queries[0], "--id", queries[1], "--unlike-id", avoided_id,
                    "--unlike", paths[5], "--unlike-weight", 0.4, "--store", store_dir, "-k", 4, "--json", *RUN)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["query"]["examples"][0]["id"] for a in answers] == queries
    for answer, wanted in zip(answers, expected):  # each as its own `search --unlike` answers it
        assert [h["id"] for h in answer["results"]] == [h["id"] for h in wanted["results"]]
        assert [h["score"] for h in answer["results"]] == pytest.approx([h["score"] for h in wanted["results"]], abs=1e-4)
        assert avoided_id not in [h["id"] for h in answer["results"]]
        assert answer["query"]["unlike"][0] == {"path": str(paths[5])} and answer["query"]["unlike"][1]["id"] == avoided_id
        assert answer["query"]["unlike_weight"] == 0.4
    plain = invoke("search", "--each", "--id", queries[0], "--store", store_dir, "-k", 4, "--json", *RUN)
    assert json.loads(plain.stdout)["results"] != answers[0]["results"]  # the unlike did move the query
    text = invoke("search", "--each", "--id", queries[0], "--unlike-id", avoided_id, "--store", store_dir, *RUN)
    assert text.exit_code == 0 and text.output.startswith(f"== id {queries[0]}")
    missing = invoke("search", "--each", "--id", queries[0], "--unlike", chips_dir / "nothing.jpg", "--store",
                     store_dir, "--model", "nobody/no-such-model")
    assert_one_line_error(missing, "--unlike image", "nothing.jpg")


def test_pillows_notes_on_an_odd_file_stay_out_of_the_run_unless_asked_for(model_dir, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "junk.tif").write_bytes(b"II*\x00garbage")  # Pillow warns of a corrupt EXIF block
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "indexer.cli", "index", str(tmp_path / "in"), "--store", str(tmp_path / "s"),
               "--model", str(model_dir), *RUN, "--workers", "0", "--no-progress"]
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "failed 1" in quiet.stdout and "Corrupt EXIF" not in quiet.stderr
    again = [str(tmp_path / "s2") if part == str(tmp_path / "s") else part for part in command]  # a fresh store
    verbose = subprocess.run(again[:3] + ["-v"] + again[3:], capture_output=True, text=True, env=env, timeout=120)
    assert "Corrupt EXIF" in verbose.stderr  # the file does make Pillow warn: -v shows it


def test_a_model_folder_that_is_not_there_is_one_line_before_any_guess_from_its_name(chips_dir, tmp_path,
                                                                                       caplog):
    result = invoke("index", chips_dir, "--store", tmp_path / "store", "--model", tmp_path / "no-such-model", *RUN)
    assert_one_line_error(result, "no model folder at", "no-such-model")
    assert "normalisation" not in caplog.text  # the name was not read for a corpus first
    assert not (tmp_path / "store").exists()


def test_every_option_has_help_and_is_in_the_readme():
    """What --help says is one half of an option's documentation; the README's synopsis and notes the other."""
    from helpers import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for name, command in cli.commands.items():
        assert f"lookalike {name}" in readme, name
        for param in command.params:
            if not isinstance(param, click.Option) or param.name == "help":
                continue
            assert param.help, f"{name} {param.opts[0]} has no help"
            spellings = [o for o in param.opts + param.secondary_opts if o.startswith("--")]
            assert not spellings or any(s in readme for s in spellings), f"{name} {spellings} not in README.md"


def test_random_model_never_writes_over_a_real_model(tmp_path):
    """Pointed at a downloaded model by mistake, random-model refuses; over its own earlier output it writes."""
    real = tmp_path / "dinov3-vit7b16-pretrain-sat493m-fp16"
    real.mkdir()
    files = {"model-00001-of-00002.safetensors": "weights", "model-00002-of-00002.safetensors": "weights",
             "model.safetensors.index.json": "{}", "config.json": '{"model_type": "dinov3_vit"}'}
    for name, text in files.items():
        (real / name).write_text(text)
    refused = invoke("random-model", real)
    assert_one_line_error(refused, "already holds files")
    assert {path.name: path.read_text() for path in real.iterdir()} == files

    made = tmp_path / "tiny"
    assert invoke("random-model", made).exit_code == 0
    again = invoke("random-model", made, "--seed", "1")  # its own: written over
    assert again.exit_code == 0, again.output
    (made / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("random-model", made), "already holds files")


def test_a_catalogue_damaged_inside_is_one_line_from_every_command(built, tmp_path):
    """Opening reads only the catalogue's header: a page damaged further in (a bad disk, a copy cut short) is met
    mid-command, and must still end in one sentence saying what to do, not an SQLite traceback."""
    import shutil
    import sqlite3

    _, _, store_dir, _ = built
    damaged = tmp_path / "damaged"
    shutil.copytree(store_dir, damaged)
    with sqlite3.connect(damaged / "catalogue.db") as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        leaves = [row[0] for row in db.execute(
            "SELECT pageno FROM dbstat WHERE name = 'vectors' AND pagetype = 'leaf' ORDER BY pageno")]
    with open(damaged / "catalogue.db", "r+b") as file:
        file.seek((leaves[0] - 1) * page_size)
        file.write(bytes(range(256)) * (page_size // 256))  # a page of nonsense where vectors were
    (damaged / "index.faiss").unlink()  # so that opening the index reads every vector

    for command in (["info"], ["search", "--id", "1"], ["export", tmp_path / "out"]):
        result = invoke(*command, "--store", damaged)
        assert_one_line_error(result, f"the catalogue of the store at {damaged} is damaged", "restore catalogue.db")


@pytest.mark.parametrize("option, value", [("--gsd", "inf"), ("--gsd", "nan"), ("--min-valid", "nan"),
                                           ("--target-recall", "nan")])
def test_a_number_option_refuses_inf_and_nan(built, option, value):
    """click's FloatRange lets them through (nan fails no comparison): --gsd inf was a traceback."""
    chips_dir, model_dir, store_dir, _ = built
    result = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN, option, value)
    assert result.exit_code == 2 and "is not a finite number" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("command", [["near-duplicates", "--threshold", "nan"],
                                     ["search", "--id", "1", "--unlike-id", "2", "--unlike-weight", "nan"]])
def test_a_query_number_option_refuses_nan(built, command):
    _, _, store_dir, _ = built
    result = invoke(*command, "--store", store_dir)
    assert result.exit_code == 2 and "is not a finite number" in result.stderr


def test_a_normalization_of_nan_is_refused_before_it_is_kept(built, tmp_path):
    chips_dir, model_dir, _, _ = built
    result = invoke("index", chips_dir, "--store", tmp_path / "store", "--model", model_dir, *RUN,
                    "--normalization", "nan,0,0/1,1,1")
    assert_usage_error(result, "three finite means")
    assert not (tmp_path / "store" / "catalogue.db").exists()


def test_an_index_run_that_finds_most_files_gone_removes_nothing(model_dir, tmp_path):
    """An unmounted share leaves its mount point empty: every file seems gone. Removed, their vectors would be
    lost; the run says so instead, and --allow-shrink removes them when that is what was meant."""
    chips_dir = copy_chips(tmp_path / "chips", 6)
    store_dir = tmp_path / "store"
    run = ["--model", model_dir, *RUN, "--workers", "0", "--no-progress"]
    assert invoke("index", chips_dir, "--store", store_dir, *run).exit_code == 0
    files = sorted(chips_dir.iterdir())
    files[0].unlink()  # a third gone: removed as before
    done = invoke("index", chips_dir, "--store", store_dir, "--json", *run)
    assert json.loads(done.stdout)["removed"] == 1
    for path in files[1:5]:  # four of the five left: refused
        path.rename(tmp_path / path.name)

    refused = invoke("index", chips_dir, "--store", store_dir, *run)
    assert_one_line_error(refused, "4 of the store's 5 images are gone from disk", "nothing was removed")
    assert invoke("info", "--store", store_dir, "--json").stdout.count('"images": 5') == 1
    preview = invoke("index", chips_dir, "--store", store_dir, "--dry-run", "--json", *run)
    assert json.loads(preview.stdout)["removed"] == 4  # the preview says what would go

    allowed = invoke("index", chips_dir, "--store", store_dir, "--allow-shrink", "--json", *run)
    assert allowed.exit_code == 0 and json.loads(allowed.stdout)["removed"] == 4


def test_a_store_whose_folder_name_is_not_utf8_keeps_its_index_file(built, tmp_path):
    """faiss takes only UTF-8 file names: in such a folder the index file was never written (a traceback at the
    end of every run) and every search rebuilt the index."""
    import os

    chips_dir, model_dir, _, _ = built
    store_dir = tmp_path / os.fsdecode(b"st\xffore")
    result = invoke("index", chips_dir, "--store", store_dir, "--model", model_dir, *RUN, "--workers", "0")
    assert result.exit_code == 0, result.output
    assert (store_dir / "index.faiss").is_file()
    searched = invoke("search", "--id", 1, "--store", store_dir, "--json", "-k", 3)
    assert searched.exit_code == 0 and "missing" not in searched.stderr
    assert json.loads(searched.stdout)["results"][0]["id"] == 1


def test_nprobe_on_an_exact_store_says_it_does_nothing(built):
    """It was ignored without a word (reindex --nprobe on such a store is refused; a search goes on)."""
    result = invoke("search", "--id", 1, "--store", built[2], "-k", 2, "--json", "--nprobe", 8)
    assert result.exit_code == 0, result.output
    assert "--nprobe has no effect here: this store's index is exact" in result.stderr
    assert json.loads(result.stdout)["results"][0]["id"] == 1
    assert "--nprobe" not in invoke("search", "--id", 1, "--store", built[2], "-k", 2, "--json").stderr


def test_a_damaged_model_folder_or_one_that_is_no_model_is_one_line_that_says_so(built, tmp_path):
    chips_dir, model_dir, *_ = built
    cut = tmp_path / "cut-dinov3-sat493m"
    cut.mkdir()
    shutil.copy(model_dir / "config.json", cut / "config.json")
    (cut / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes()[:3000])  # cut short
    stray = tmp_path / "notes-sat493m"
    stray.mkdir()
    (stray / "readme.txt").write_text("not a model")
    for folder in (cut, stray):
        result = invoke("index", chips_dir, "--store", tmp_path / f"s-{folder.name}", "--model", folder, *RUN)
        assert_one_line_error(result, f"cannot load model {str(folder)!r}", "not a complete Hugging Face model folder")
        assert "offline" not in result.output


def test_serve_refuses_a_model_folder_that_is_not_there_before_it_starts(built, tmp_path):
    from helpers import REPO_ROOT

    # in a process of its own: a serve that does start becomes Streamlit, which the timeout then stops
    result = subprocess.run([sys.executable, "-m", "indexer.cli", "serve", "--store", str(built[2]), "--model",
                             str(tmp_path / "gone" / "model"), "--port", "1"], capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == [
        f"Error: cannot load model {str(tmp_path / 'gone' / 'model')!r}: no model folder at "
        f"{tmp_path / 'gone' / 'model'} (it does not exist); pass --model DIR (or set LOOKALIKE_MODEL=DIR) with DIR "
        "the downloaded model, or a Hub id such as mirekphd/dinov3-vit7b16-pretrain-sat493m-fp16"]


def test_an_error_says_where_the_verbose_option_goes(built, tmp_path):
    (tmp_path / "afile").write_text("a file, not a folder")
    result = invoke("index", built[0], "--store", tmp_path / "afile" / "store", "--model", built[1], *RUN)
    assert_one_line_error(result, "lookalike -vv COMMAND")
    again = CliRunner().invoke(cli, ["-vv", "index", str(built[0]), "--store", str(tmp_path / "afile" / "store"),
                                     "--model", str(built[1]), *RUN])
    assert again.exit_code == 1 and "No such option" not in again.output  # where the hint puts it, it is taken


def test_vv_shows_the_traceback_of_a_one_line_error(tmp_path):
    """README: `-vv` for debug, with the traceback of an error that is otherwise one line (a store's or the
    indexer's own errors too, not only the file system's)."""
    plain = invoke("info", "--store", tmp_path / "nostore")
    assert_one_line_error(plain, "no lookalike store")
    verbose = subprocess.run([sys.executable, "-m", "indexer.cli", "-vv", "info", "--store", str(tmp_path / "nostore")],
                             capture_output=True, text=True, timeout=120)
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr and "StoreNotFound" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1].startswith("Error: no lookalike store")


def test_without_faiss_nothing_is_indexed_and_search_says_what_is_missing(built, tmp_path, monkeypatch):
    """A bare `pip install` (faiss is an extra) indexed everything and left a store no command could search,
    warning of an exact search that could not run either."""
    import store.faiss_index

    chips_dir, _, store_dir, _ = built
    monkeypatch.setattr(store.faiss_index, "faiss", None)
    result = invoke("index", chips_dir, "--store", tmp_path / "new", "--model", "nobody/no-such-dinov3", *RUN)
    assert_one_line_error(result, "faiss is not installed", "pip install faiss-cpu")  # before the model would load
    assert not (tmp_path / "new").exists()

    found = invoke("search", "--id", 1, "--store", store_dir, "-k", 2)
    assert_one_line_error(found, "faiss is not installed")
    assert "searching every vector exactly" not in found.output


def test_no_progress_also_quiets_the_model_loading_bar(built, tmp_path):
    chips_dir, model_dir, _, _ = built
    command = [sys.executable, "-m", "indexer.cli", "index", str(chips_dir), "--store", str(tmp_path / "s"),
               "--model", str(model_dir), *RUN, "--workers", "0"]
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_DISABLE_PROGRESS_BARS"}  # conftest's
    loud = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    quiet = subprocess.run([*command[:-2], "--store", str(tmp_path / "q"), "--workers", "0", "--no-progress"],
                           capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr  # the bar this test is about exists
    assert quiet.returncode == 0 and "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr


@pytest.mark.parametrize("value", ["", "AUTO", "SAT493M"])
def test_normalization_empty_means_not_given_and_names_ignore_case(built, tmp_path, value):
    chips_dir, model_dir, _, _ = built
    result = invoke("index", chips_dir, "--store", tmp_path / "s", "--model", model_dir, *RUN, "--normalization", value,
                    "--dry-run")
    assert result.exit_code == 0, result.output


def test_quiet_loading_leaves_the_bars_as_they_were(built, tmp_path):
    from transformers.utils import logging as transformers_logging

    chips_dir, model_dir, _, _ = built
    transformers_logging.enable_progress_bar()  # as in a notebook (an earlier in-process run may have left it off)
    assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == "1"  # conftest's: the user's say over the Hub's bars
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke("index", chips_dir, "--store", tmp_path / "s", "--model", model_dir, *RUN, "--json")
    assert result.exit_code == 0 and transformers_logging.is_progress_bar_enabled()
    assert not [w for w in caught if "progress bars" in str(w.message)]  # "Cannot enable progress bars: ..."


def test_search_json_keeps_the_model_loading_bar_off_stderr(built):
    chips_dir, _, store_dir, _ = built
    image = str(next(chips_dir.glob("*.jpg")))
    env = {name: value for name, value in os.environ.items() if name != "HF_HUB_DISABLE_PROGRESS_BARS"}  # conftest's
    command = [sys.executable, "-m", "indexer.cli", "search", image, "--store", str(store_dir), "-k", "2"]
    loud = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    quiet = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300, env=env)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr  # the bar this test is about exists
    assert quiet.returncode == 0 and "Loading weights" not in quiet.stderr and json.loads(quiet.stdout)["results"]


def test_quiet_loading_turns_both_bars_off_inside_and_back_after(monkeypatch):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    from indexer.embedder import quiet_loading

    import importlib

    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)  # conftest sets it; a user's shell does not
    hub_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")  # the module, not its class
    monkeypatch.setattr(hub_tqdm, "HF_HUB_DISABLE_PROGRESS_BARS", None)  # as the Hub read the variable at import
    transformers_logging.enable_progress_bar()
    try:
        with quiet_loading():
            assert not transformers_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
        assert transformers_logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
        with quiet_loading(False):
            assert transformers_logging.is_progress_bar_enabled()
    finally:
        transformers_logging.disable_progress_bar()  # as conftest's variable has it for the rest of the session
