"""Errors a user can cause end in one line naming the file or argument and what to do, and leave
no output and no temporary behind; an unexpected exception keeps its traceback."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from safetensors import SafetensorError

from circuitflow import outputs
from circuitflow.ablation import useful
from circuitflow.cli import main
from circuitflow.errors import JsonFileError, OutputError
from circuitflow.json_files import read_json
from circuitflow.outputs import atomic_path, save_figure
from circuitflow.tables import write_table

USEFUL_PARAMS = json.dumps({"ablation": {"useful_threshold": 10}})


def summary_table(path):
    write_table(pd.DataFrame({
        "node": ["l0.h1", "l0.mlp"], "layer": [0, 0], "component": ["head", "mlp"],
        "head": pd.array([1, None], dtype="Int64"), "position": [3, 3], "fail_rate": [50.0, 5.0],
    }), path)
    return path


def fails_in_one_line(capsys, argv, stage, *mentions):
    """Run the command line; it must exit 1 with one error line mentioning each of ``mentions``
    (progress bars of transformers may come before it)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    *before, message = err.splitlines()
    assert message.startswith(f"circuitflow {stage}: error: "), err
    assert not any("error" in line or "Traceback" in line for line in before), err
    for mention in mentions:
        assert str(mention) in message, (mention, message)


def left_behind(folder, *keep):
    """Whatever is in ``folder`` besides the named inputs."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# --- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, params, mentions",
    [
        ([], "{not json", ["--params is not valid JSON", "JSON object"]),
        ([], '["ablation"]', ["--params must be a JSON object", "list"]),
        (["colour=red.txt"], USEFUL_PARAMS, ["unknown argument colour=", "summary=PATH out=PATH"]),
        # A bare path joins the list of the name before it; out= takes one path.
        (["summary"], USEFUL_PARAMS, ["out= takes one path", "summary=PATH out=PATH"]),
        (["out=other.json"], USEFUL_PARAMS, ["out= takes one path"]),
        (["out="], USEFUL_PARAMS, ["'out=': no path after '='"]),
    ],
)
def test_bad_arguments_and_params(tmp_path, capsys, extra, params, mentions):
    summary = summary_table(tmp_path / "summary.parquet")
    out = tmp_path / "useful.json"
    argv = ["useful-nodes", f"summary={summary}", f"out={out}", *extra, "--params", params]
    fails_in_one_line(capsys, argv, "useful-nodes", *mentions)
    assert left_behind(tmp_path, "summary.parquet") == []


def test_bare_path_before_any_name(tmp_path, capsys):
    summary = summary_table(tmp_path / "summary.parquet")
    argv = ["useful-nodes", "stray", f"summary={summary}", f"out={tmp_path / 'useful.json'}",
            "--params", USEFUL_PARAMS]
    fails_in_one_line(capsys, argv, "useful-nodes", "expected name=path", "'stray'")
    assert left_behind(tmp_path, "summary.parquet") == []


def test_missing_argument(tmp_path, capsys):
    summary = summary_table(tmp_path / "summary.parquet")
    argv = ["useful-nodes", f"summary={summary}", "--params", USEFUL_PARAMS]
    fails_in_one_line(capsys, argv, "useful-nodes", "missing argument out=PATH", "summary=PATH")
    assert left_behind(tmp_path, "summary.parquet") == []


def test_unreadable_input_is_one_line(tmp_path, capsys):
    summary = tmp_path / "summary.parquet"
    summary.write_bytes(b"PAR1 cut short")
    out = tmp_path / "useful.json"
    argv = ["useful-nodes", f"summary={summary}", f"out={out}", "--params", USEFUL_PARAMS]
    fails_in_one_line(capsys, argv, "useful-nodes", summary, "run the workflow again")
    assert left_behind(tmp_path, "summary.parquet") == []


def test_unexpected_exception_keeps_its_traceback(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(useful, "useful_nodes", broken)
    summary = summary_table(tmp_path / "summary.parquet")
    argv = ["useful-nodes", f"summary={summary}", f"out={tmp_path / 'u.json'}",
            "--params", USEFUL_PARAMS]
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)


# --- no space left on the device -----------------------------------------------------------


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_during_a_stage(tmp_path, capsys, monkeypatch):
    real_write_text = type(tmp_path).write_text

    def write_half_then_fail(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2])
        no_space()

    monkeypatch.setattr(type(tmp_path), "write_text", write_half_then_fail)
    summary = summary_table(tmp_path / "summary.parquet")
    out = tmp_path / "results" / "useful.json"
    argv = ["useful-nodes", f"summary={summary}", f"out={out}", "--params", USEFUL_PARAMS]
    fails_in_one_line(capsys, argv, "useful-nodes", out, "no space left", "free space")
    assert left_behind(out.parent) == []


def test_full_disk_for_every_writer(tmp_path, monkeypatch):
    """Parquet and figures raise OSError(ENOSPC); the model writer, safetensors, says it only in
    its message."""
    import matplotlib.pyplot as plt

    monkeypatch.setattr("pyarrow.parquet.write_table", no_space)
    with pytest.raises(OutputError, match=r"t\.parquet: no space left"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet")

    fig = plt.figure()
    monkeypatch.setattr(fig, "savefig", no_space)
    with pytest.raises(OutputError, match=r"plot\.png: no space left"):
        save_figure(fig, tmp_path / "plot.png")

    message = f"Error while serializing: I/O error: {os.strerror(errno.ENOSPC)} (os error 28)"
    with pytest.raises(OutputError, match="model: no space left"):
        with atomic_path(tmp_path / "model", directory=True) as tmp:
            (tmp / "config.json").write_text("{}")
            raise SafetensorError(message)
    assert left_behind(tmp_path) == []


def test_other_write_errors_pass_through(tmp_path):
    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "t.txt"):
            raise OSError(errno.EIO, "device error")
    assert not isinstance(caught.value, OutputError)
    assert left_behind(tmp_path) == []


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(OutputError, match=r"results/t\.txt: cannot create a file in"):
        with atomic_path(blocker / "t.txt"):
            pass
    assert left_behind(tmp_path, "results") == []


# --- a write killed midway -----------------------------------------------------------------


def killed_while_writing(target, directory):
    """Leave what a SIGKILLed write leaves: a temporary next to ``target``."""
    script = textwrap.dedent(f"""
        import time
        from circuitflow.outputs import atomic_path
        with atomic_path({str(target)!r}, directory={directory}) as tmp:
            (tmp / "half" if {directory} else tmp).write_text("half")
            print("writing", flush=True)
            time.sleep(60)
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline() == "writing\n"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    writer.stdout.close()


def test_next_run_removes_what_a_killed_write_left(tmp_path):
    summary = summary_table(tmp_path / "summary.parquet")
    out = tmp_path / "results" / "useful.json"
    killed_while_writing(out, directory=False)
    killed_while_writing(out, directory=True)
    other = out.parent / ".other.json.tmp-kept"  # another target's, written by another job
    other.write_text("")
    # Only outputs are cleaned: an input's folder may hold another job's writes in progress.
    of_input = summary.parent / ".summary.parquet.tmp-kept.parquet"
    of_input.write_text("")
    assert len(left_behind(out.parent)) == 3

    main(["useful-nodes", f"summary={summary}", f"out={out}", "--params", USEFUL_PARAMS])
    assert left_behind(out.parent) == [other.name, "useful.json"]
    assert of_input.exists()
    assert [n["layer"] for n in json.loads(out.read_text())] == [0]


def test_stale_temporaries_of_inputs_and_missing_folders(tmp_path):
    target = tmp_path / "data" / "examples.parquet"
    target.parent.mkdir()
    (target.parent / ".examples.parquet.tmp-abc.parquet").write_text("half")
    (target.parent / ".examples.parquet.tmp-def").mkdir()
    (target.parent / "examples.parquet.tmp-abc").write_text("not a temporary of ours")
    outputs.remove_stale_temporaries([target, tmp_path / "absent" / "x.json"])
    assert left_behind(target.parent) == ["examples.parquet.tmp-abc"]


# --- model files -----------------------------------------------------------------------------


def broken_copy(tiny_model_dir, tmp_path, damage):
    directory = tmp_path / "model"
    shutil.copytree(tiny_model_dir("gpt2"), directory)
    damage(directory)
    return directory


def without_tokenizer(directory):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()


def truncated_weights(directory):
    weights = directory / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage, mentions",
    [
        (without_tokenizer, ["tokenizer.json is missing", "vocab.json and merges.txt", "copy"]),
        (truncated_weights, ["model.safetensors is truncated or corrupt", "copy or download"]),
    ],
)
def test_broken_model_directory(tiny_model_dir, tmp_path, capsys, damage, mentions):
    """Through corrupt-pairs, whose first step is loading the model."""
    directory = broken_copy(tiny_model_dir, tmp_path, damage)
    out = tmp_path / "results" / "pairs.parquet"
    params = {"model": {"source": "local", "path": str(directory)}, "device": "cpu"}
    argv = ["corrupt-pairs", f"out={out}", "--params", json.dumps(params)]
    fails_in_one_line(capsys, argv, "corrupt-pairs", directory, *mentions)
    assert not out.parent.exists() or left_behind(out.parent) == []


# --- JSON inputs -----------------------------------------------------------------------------


def test_read_json_round_trip(tmp_path):
    nodes = [{"position": 3, "layer": 0, "is_head": True, "num": 1, "tags": ["Fail%:50"]}]
    (tmp_path / "useful_nodes.json").write_text(json.dumps(nodes))
    assert read_json(tmp_path / "useful_nodes.json") == nodes


@pytest.mark.parametrize(
    "content", [b'[{"position": 3, "layer"', b"", b"\xff\xfe not text"],
    ids=["cut", "empty", "binary"],
)
def test_corrupt_json_names_the_file(tmp_path, content):
    path = tmp_path / "useful_nodes.json"
    path.write_bytes(content)
    with pytest.raises(JsonFileError) as caught:
        read_json(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: not valid JSON") and "run the workflow again" in message


def test_missing_json_names_the_file(tmp_path):
    with pytest.raises(JsonFileError, match=r"useful_nodes\.json: file not found"):
        read_json(tmp_path / "useful_nodes.json")
