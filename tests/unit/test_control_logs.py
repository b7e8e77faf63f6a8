"""Replica logs: the last lines of each file, then only complete new lines after a cursor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shipyard.control import logs


def write(path: Path, text: str, mode: str = "a") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as handle:
        handle.write(text)


def test_tail_then_since_a_cursor(tmp_path):
    folder = tmp_path / "default" / "iris"
    write(folder / "iris-predictor-00001-0.log", "".join(f"line {i}\n" for i in range(5000)))
    files = logs.files_in(folder)
    assert [(f.label, f.revision) for f in files] == [("iris-predictor-00001-0", "iris-predictor-00001")]
    chunk = logs.tail(files, 3)
    assert chunk.text == "line 4997\nline 4998\nline 4999\n"
    assert logs.since(files, chunk.cursor).text == ""
    write(folder / "iris-predictor-00001-0.log", "line 5000\nhalf a li")
    later = logs.since(files, chunk.cursor)
    assert later.text == "line 5000\n"  # the partial line waits until it is complete
    write(folder / "iris-predictor-00001-0.log", "ne\n")
    assert logs.since(files, later.cursor).text == "half a line\n"
    assert logs.tail(files, 0).text == ""


def test_several_files_are_prefixed_and_new_files_read_from_start(tmp_path):
    folder = tmp_path / "default" / "iris"
    write(folder / "iris-predictor-00001-0.log", "a1\na2\n")
    chunk = logs.tail(logs.files_in(folder), 10)
    assert chunk.text == "a1\na2\n"
    write(folder / "iris-predictor-00002-0.log", "b1\n")
    write(folder / "iris-predictor-00001-0.log", "a3\n")
    assert logs.since(logs.files_in(folder), chunk.cursor).text == \
        "[iris-predictor-00001-0] a3\n[iris-predictor-00002-0] b1\n"


def test_a_truncated_file_is_read_again_from_its_start(tmp_path):
    path = tmp_path / "r-0.log"
    write(path, "old 1\nold 2\n")
    chunk = logs.tail(logs.files_in(tmp_path), 10)
    write(path, "new\n", mode="w")
    assert logs.since(logs.files_in(tmp_path), chunk.cursor).text == "new\n"


def test_recorded_paths_name_their_revision(tmp_path):
    path = tmp_path / "elsewhere" / "odd-name.log"
    write(path, "x\n")
    [file] = logs.files_in(tmp_path / "missing", {path: "iris-predictor-00003"})
    assert (file.revision, file.path) == ("iris-predictor-00003", path)


def test_follow_waits_for_a_new_line(tmp_path):
    path = tmp_path / "r-0.log"
    write(path, "first\n")

    async def scenario() -> tuple[logs.LogChunk, logs.LogChunk]:
        cursor = logs.tail(logs.files_in(tmp_path), 10).cursor
        quiet = await logs.follow(lambda: logs.files_in(tmp_path), cursor, 0.3)
        asyncio.get_running_loop().call_later(0.3, write, path, "second\n")
        return quiet, await logs.follow(lambda: logs.files_in(tmp_path), cursor, 20)

    quiet, news = asyncio.run(scenario())
    assert quiet.text == "" and news.text == "second\n"


@pytest.mark.parametrize("cursor", ["no-offset", "a:b", ":5"])
def test_bad_cursors_are_named(cursor):
    with pytest.raises(ValueError, match="is not LABEL:OFFSET"):
        logs.decode_cursor(cursor)
