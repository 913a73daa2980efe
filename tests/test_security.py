"""What the product refuses to do: load pickles or remote code, bind to the world, read paths it was not given."""
import os
import re

import pytest
from click.testing import CliRunner
from streamlit.testing.v1 import AppTest

from helpers import REPO_ROOT, ids_by_path
from indexer.cli import cli

CODE_DIRS = ("indexer", "store", "ui", "bench", "scripts")
FORBIDDEN = re.compile(r"torch\.load\(|\bimport pickle\b|pickle\.loads?\(|allow_pickle\s*=\s*True|"
                       r"trust_remote_code\s*=\s*True")


def test_no_pickle_or_remote_code_anywhere_in_the_code():
    offenders = []
    for folder in CODE_DIRS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if any(part.startswith(".venv") for part in path.parts):  # a benchmark's own environment
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if FORBIDDEN.search(line):
                    offenders.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_model_is_loaded_from_safetensors_without_remote_code(monkeypatch):
    import transformers

    from indexer.embedder import DinoV3Embedder
    from indexer.errors import ModelUnavailable

    seen = {}

    def refuse(name, **kwargs):
        seen.update(kwargs, name=name)
        raise OSError("offline")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    with pytest.raises(ModelUnavailable):
        DinoV3Embedder.from_pretrained("someone/dinov3-sat493m", device="cpu")
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False


def serve_command(monkeypatch, store_dir, *args):
    captured = {}

    def fake_exec(program, command, env):
        captured.update(command=command, env=env)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", fake_exec)
    result = CliRunner().invoke(cli, ["serve", "--store", str(store_dir), *args])
    assert result.exit_code == 0, result.output
    return captured


def test_serve_binds_to_loopback_unless_told(monkeypatch, ui_store_dir):
    command = serve_command(monkeypatch, ui_store_dir)["command"]
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.maxUploadSize") + 1] == "50"
    wide = serve_command(monkeypatch, ui_store_dir, "--host", "0.0.0.0", "--max-upload-mb", "7")
    assert wide["command"][wide["command"].index("--server.address") + 1] == "0.0.0.0"
    assert wide["env"]["LOOKALIKE_MAX_UPLOAD_MB"] == "7"
    assert wide["command"][wide["command"].index("--server.maxUploadSize") + 1] == "7"


def test_a_store_of_another_schema_version_is_refused_in_one_line(index, chips_dir, store_dir):
    from store import Store, StoreError
    from store.catalogue import set_meta

    index([chips_dir], store_dir)
    store = Store.open(store_dir)
    set_meta(store.db, "schema_version", 99)
    store.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store.open(store_dir)
    result = CliRunner().invoke(cli, ["info", "--store", str(store_dir)])
    assert result.exit_code == 1 and "schema version 99" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("params", [{"id": "../../../../etc/passwd"}, {"id": "/etc/passwd"}, {"id": "-1"},
                                    {"path": "/etc/passwd"}, {"id": "1e9"}])
def test_the_page_reads_no_path_from_the_address(monkeypatch, ui_store_dir, params):
    monkeypatch.setenv("LOOKALIKE_STORE", str(ui_store_dir))
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60)
    for name, value in params.items():
        at.query_params[name] = value
    at.run()
    assert not at.exception
    shown = " ".join([e.value for e in at.error] + [c.value for c in at.caption] + [m.value for m in at.markdown])
    assert "root:" not in shown and "/etc/passwd" not in " ".join(c.value for c in at.caption)


def test_an_oversized_upload_is_refused_with_the_setting_named(monkeypatch, ui_store_dir):
    monkeypatch.setenv("LOOKALIKE_STORE", str(ui_store_dir))
    monkeypatch.setenv("LOOKALIKE_MAX_UPLOAD_MB", "1")
    at = AppTest.from_file(str(REPO_ROOT / "ui" / "app.py"), default_timeout=60)
    at.run()
    at.file_uploader[0].upload("big.png", b"\0" * (3 * 2**20 // 2), "image/png").run()
    assert not at.exception
    assert len(at.error) == 1 and "--max-upload-mb" in at.error[0].value


def test_strict_turns_failures_into_a_non_zero_exit(model_dir, chips_dir, tmp_path):
    (chips_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    args = ["index", str(chips_dir), "--model", str(model_dir), "--dtype", "float32", "--workers", "0",
            "--no-progress"]
    relaxed = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "a")])
    assert relaxed.exit_code == 0 and "failed: 1 ×" in relaxed.output
    strict = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "b"), "--strict"])
    assert strict.exit_code == 1 and "--strict: 1 file(s) failed" in strict.output
    # a rerun does not try the unchanged broken file again, and stays red while it is there
    rerun = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "b"), "--strict"])
    assert rerun.exit_code == 1 and "0 file(s) failed in this run and 1 still fail unchanged" in rerun.output
    (chips_dir / "broken.jpg").unlink()
    fixed = CliRunner().invoke(cli, [*args, "--store", str(tmp_path / "b"), "--strict"])
    assert fixed.exit_code == 0, fixed.output


def test_symlinks_out_of_the_indexed_folders_are_reported_not_followed(index, chips_dir, store_dir, tmp_path,
                                                                       open_store):
    from indexer.images import OUTSIDE_LINK_REASON

    chip = sorted(chips_dir.glob("*.jpg"))[0]
    outside_dir = tmp_path / "private"
    outside_dir.mkdir()
    secret = outside_dir / "secret.jpg"
    secret.write_bytes(chip.read_bytes())
    (chips_dir / "innocent.jpg").symlink_to(secret)
    (chips_dir / "sibling.jpg").symlink_to(chip)  # inside: followed
    (chips_dir / "linked-folder").symlink_to(outside_dir, target_is_directory=True)  # not walked

    summary = index([chips_dir], store_dir)
    store = open_store(store_dir)
    paths = set(ids_by_path(store))
    assert str(chips_dir / "sibling.jpg") in paths
    assert not any("innocent" in p or "private" in p or "linked-folder" in p for p in paths)
    failure = store.db.execute("SELECT reason FROM failures WHERE path = ?",
                               [str(chips_dir / "innocent.jpg")]).fetchone()
    assert failure == (OUTSIDE_LINK_REASON,)
    assert summary["failure_reasons"] == {OUTSIDE_LINK_REASON.split(" (")[0]: 1}  # counted by reason
    # named directly, the same file is indexed: the user asked for it
    index([chips_dir, secret], store_dir)
    assert str(secret) in ids_by_path(open_store(store_dir))


def test_a_link_repointed_after_indexing_is_not_served(index, chips_dir, store_dir, tmp_path, open_store):
    from indexer.api import load_indexed_image
    from indexer.errors import UnreadableImage

    target = chips_dir / "real.jpg"
    target.write_bytes(sorted(chips_dir.glob("*.jpg"))[0].read_bytes())
    link = chips_dir / "link.jpg"
    link.symlink_to(target)
    index([chips_dir], store_dir)
    store = open_store(store_dir)
    hit = store.search(store.vector(ids_by_path(store)[str(link)]), k=1)[0]
    assert load_indexed_image(hit).size  # served while it is what was indexed

    elsewhere = tmp_path / "passwd.jpg"
    elsewhere.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    link.unlink()
    link.symlink_to(elsewhere)  # swapped after indexing, to a file outside the indexed folder
    with pytest.raises(UnreadableImage, match="changed on disk since it was indexed"):
        load_indexed_image(hit)
