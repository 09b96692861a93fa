"""What the CLI writes, and what it never writes: issue 13's output-path classes.

* non-finite results (a huge ``--alpha``, a huge delta, a LoRA ``lora_alpha: Infinity``) are an
  input error naming the parameter, and nothing is written, in ``apply``, ``transport`` and the
  registration path;
* ``--out`` is exclusive: an existing file or directory theseus-ops did not write is refused
  unless ``--overwrite``, which then replaces it whole, only once the new one is complete;
* ``prepare`` refuses an alignment with no spaces;
* bad output paths, argument errors and errors at the edges (MLflow, S3) are one line, exit 2;
* SIGTERM during a write leaves nothing behind and exits 143;
* outputs get the umask's mode, and ``-q`` is silent on success.

Most cases run ``main`` in-process (as tests/test_bad_input.py does); signals, ``-q`` and the
edge services run the installed console script as a real process.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import tiny
from tests.conftest_servers import mlflow_sqlite, moto_endpoint  # noqa: F401 - fixtures
from tests.test_bad_input import PREFIX, assert_clean_error, leftovers, run
from theseus_ops.errors import InputError

MARKER = ".theseus-ops.json"  # what theseus-ops writes into each output directory


CLI = str(Path(sys.executable).parent / "theseus-ops")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
Q_PROJ = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> SimpleNamespace:
    """A tiny Llama pair, a task vector, calibration data and a LoRA adapter with lora_alpha Infinity."""
    root = tmp_path_factory.mktemp("cli_outputs")
    state = tiny.file_state(tiny.build(tiny.llama_config(), seed=0), root / "src")
    tiny.save(tiny.build(tiny.llama_config(), seed=1), root / "tgt")
    huge = {k: torch.full_like(v, 1e38) for k, v in tiny.random_delta(state).items()}
    lora = root / "lora_inf"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": float("inf"), "target_modules": ["q_proj"]}))
    gen = torch.Generator().manual_seed(0)
    save_file({f"base_model.model.{Q_PROJ}.lora_A.weight": torch.randn(2, 32, generator=gen),
               f"base_model.model.{Q_PROJ}.lora_B.weight": torch.randn(32, 2, generator=gen)},
              str(lora / "adapter_model.safetensors"))
    return SimpleNamespace(
        root=root, src=root / "src", tgt=root / "tgt", state=state, lora_inf=lora,
        tv=tiny.save_delta(tiny.random_delta(state), root / "tv.safetensors"),
        huge_tv=tiny.save_delta(huge, root / "huge.safetensors"),
        cal=tiny.calibration(root / "cal.safetensors", rows=16),
    )


def apply(w, out, *extra, tv=None, alpha="1.0") -> list:
    return ["apply", "--base", w.src, "--task-vector", tv or w.tv, "--alpha", alpha, *extra, "--out", out]


def transport(w, out, *extra, tv=None, method="pad") -> list:
    return ["transport", "--source-base", w.src, "--target-base", w.tgt, "--task-vector", tv or w.tv,
            "--method", method, *extra, "--out", out]


def prepare(w, out, *extra, target=None) -> list:
    return ["prepare", "--source-base", w.src, "--target-base", target or w.tgt, "--calibration", w.cal,
            "--device", "cpu", *extra, "--out", out]


def cli(*argv, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, argv)], capture_output=True, text=True, env=ENV, timeout=timeout)


def one_error_line(proc: subprocess.CompletedProcess, *keywords: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), proc.stderr
    for keyword in keywords:
        assert keyword in lines[0], f"{keyword!r} not in {lines[0]!r}"
    return lines[0]


def user_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("five years of work")
    (path / "data").mkdir()
    (path / "data" / "results.csv").write_text("1,2,3")
    return path


def user_files(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): p.read_text() for p in path.rglob("*") if p.is_file()}


# ------------------------------------------------------------------------- 2. non-finite output

NON_FINITE = {
    "huge-alpha": lambda w, out: apply(w, out, alpha="1e300"),
    "huge-delta-times-alpha": lambda w, out: apply(w, out, tv=w.huge_tv, alpha="10"),
    "lora-alpha-infinity": lambda w, out: apply(w, out, tv=w.lora_inf),
    "transport-lora-alpha-infinity": lambda w, out: transport(w, out, tv=w.lora_inf),
}


@pytest.mark.parametrize("case", list(NON_FINITE))
def test_non_finite_result_is_an_input_error_and_nothing_is_written(w, tmp_path, capsys, case):
    out = tmp_path / "outdir" / "result"
    rc, err = run(capsys, NON_FINITE[case](w, out))
    line = assert_clean_error(rc, err, (), out)
    assert any(word in line.lower() for word in ("inf", "nan", "finite")), line  # names the non-finite value
    if case.startswith("huge"):
        # names the parameter (whichever the merge reaches first: the order is the checkpoint's)
        named = line.split(": ")[-1].split(" would be NaN or Inf")[0]
        assert "would be NaN or Inf" in line and named in w.state, line


def test_registration_refuses_a_model_with_non_finite_weights(tmp_path):
    """The workflow's registration saves the merged model as an MLflow model: never with Inf in it."""
    from tests.catalog_support import make_base
    from theseus_ops.catalog.register import _save_transformers_model

    model_dir = make_base(tmp_path / "model")
    weights = load_file(str(model_dir / "model.safetensors"))
    weights[f"{Q_PROJ}.weight"][0, 0] = float("inf")
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(InputError, match=rf"{Q_PROJ}.weight would be NaN or Inf"):
        _save_transformers_model(model_dir, tmp_path / "mlflow-model")
    assert not (tmp_path / "mlflow-model").exists()


# ------------------------------------------------------------------------ 3. exclusive --out

def test_apply_never_deletes_an_unrelated_directory(w, tmp_path, capsys):
    out = user_dir(tmp_path / "my-work")
    before = user_files(out)
    rc, err = run(capsys, apply(w, out))
    assert_clean_error(rc, err, ("my-work", "--overwrite"), None)
    assert user_files(out) == before
    assert leftovers(out) == ["my-work"]


def test_apply_overwrite_replaces_the_directory_whole(w, tmp_path, capsys):
    out = user_dir(tmp_path / "my-work")
    rc, err = run(capsys, apply(w, out, "--overwrite"))
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "config.json", "generation_config.json",
                                                            "model.safetensors"])
    assert leftovers(out) == ["my-work"]  # no .tmp, no .old


def test_apply_replaces_its_own_output_but_not_what_was_added_to_it(w, tmp_path, capsys):
    out = tmp_path / "merged"
    assert run(capsys, apply(w, out))[0] == 0
    rc, err = run(capsys, apply(w, out, alpha="0.5"))  # a re-run replaces what theseus-ops wrote
    assert rc == 0, err
    (out / "notes.md").write_text("mine")
    rc, err = run(capsys, apply(w, out))
    assert_clean_error(rc, err, ("merged", "--overwrite"), None)
    assert (out / "notes.md").read_text() == "mine"
    assert leftovers(out) == ["merged"]


@pytest.mark.parametrize("command", ["transport", "transport-report", "prepare"])
def test_file_outputs_never_clobber_an_unrelated_file(w, tmp_path, capsys, command):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not lose me")
    if command == "transport":
        argv = transport(w, precious)
    elif command == "transport-report":
        argv = transport(w, tmp_path / "tv-b.safetensors", "--report", precious)
    else:
        argv = prepare(w, precious)
    rc, err = run(capsys, argv)
    assert_clean_error(rc, err, ("precious.txt", "--overwrite"), None)
    assert precious.read_text() == "do not lose me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]
    rc, err = run(capsys, [*argv, "--overwrite"])
    assert rc == 0, err
    assert precious.read_bytes() != b"do not lose me"


def test_a_symlinked_out_is_not_followed(w, tmp_path, capsys):
    target = user_dir(tmp_path / "elsewhere")
    before = user_files(target)
    link = tmp_path / "outdir" / "merged"
    link.parent.mkdir()
    link.symlink_to(target, target_is_directory=True)
    rc, err = run(capsys, apply(w, link))
    assert_clean_error(rc, err, ("symbolic link",), None)
    assert link.is_symlink() and user_files(target) == before
    assert leftovers(link) == ["merged"]


def test_transport_rerun_replaces_its_own_outputs(w, tmp_path, capsys):
    out, report = tmp_path / "tv-b.safetensors", tmp_path / "report.json"
    for _ in range(2):
        rc, err = run(capsys, transport(w, out, "--report", report))
        assert rc == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "tv-b.safetensors"]


# ----------------------------------------------------------------- 4. empty or NaN alignments

@pytest.mark.parametrize("architectures", [None, ["NoSuchArchitectureForCausalLM"]])
def test_prepare_refuses_an_alignment_without_spaces(w, tmp_path, capsys, architectures):
    import shutil

    target = Path(shutil.copytree(w.tgt, tmp_path / "target"))
    config = json.loads((target / "config.json").read_text())
    config.pop("architectures")
    if architectures:
        config["architectures"] = architectures
    (target / "config.json").write_text(json.dumps(config))
    out = tmp_path / "outdir" / "pair.alignment"
    rc, err = run(capsys, prepare(w, out, target=target))
    assert_clean_error(rc, err, ("no space", "architectures"), out)


def test_prepare_refuses_an_alignment_with_nan_quality(w, tmp_path, capsys):
    """A target whose weights are all zero has zero activations: residuals are 0/0, NaN."""
    import shutil

    target = Path(shutil.copytree(w.tgt, tmp_path / "target"))
    weights = load_file(str(target / "model.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, str(target / "model.safetensors"),
              metadata={"format": "pt"})
    out = tmp_path / "outdir" / "pair.alignment"
    rc, err = run(capsys, prepare(w, out, target=target))
    assert_clean_error(rc, err, ("non-finite", "nan"), out)


# -------------------------------------------------------- 7. bad --out paths, one line, exit 2

def _bad_out(tmp: Path, kind: str) -> Path:
    if kind == "under-a-file":
        (tmp / "a-file").write_text("x")
        return tmp / "a-file" / "out"
    if kind == "under-proc":
        return Path("/proc/theseus-out")
    if kind == "read-only-dir":  # sysfs refuses new files even to root; chmod would not stop root
        if os.geteuid() != 0:
            ro = tmp / "ro"
            ro.mkdir(mode=0o555)
            return ro / "out"
        return Path("/sys/kernel/theseus-out")
    return Path(".")


@pytest.mark.parametrize("command", ["apply", "transport", "prepare"])
@pytest.mark.parametrize("kind", ["under-a-file", "under-proc", "read-only-dir", "dot"])
def test_bad_out_paths_are_one_line_before_any_work(w, tmp_path, capsys, monkeypatch, command, kind):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (workdir / "keep.txt").write_text("mine")
    monkeypatch.chdir(workdir)
    out = _bad_out(tmp_path, kind)
    if command == "transport":
        argv = transport(w, out, "--report", tmp_path / "r.json")
    else:
        argv = (apply if command == "apply" else prepare)(w, out)
    rc, err = run(capsys, argv)
    assert_clean_error(rc, err, ("--out",), None)
    assert "loading models" not in err  # refused before the computation
    assert not (tmp_path / "r.json").exists()  # a failing transport leaves no report
    assert sorted(p.name for p in workdir.iterdir()) == ["keep.txt"]


# ------------------------------------------------------------------- argument errors: one line

@pytest.mark.parametrize("argv", [
    ["apply", "--base", "x"],
    ["apply", "--base", "x", "--task-vector", "y", "--out", "z", "--alpha", "abc"],
    ["no-such-command"],
    ["transport", "--method", "nope"],
    ["catalog", "land", "--family", "f"],
])
def test_argument_errors_are_one_line(argv):
    one_error_line(cli(*argv, timeout=60))


def test_catalog_test_parser_still_works_with_a_plain_argparse():
    """tests/test_catalog.py wraps the catalog subcommands in a plain ArgumentParser."""
    import argparse

    from theseus_ops.catalog import cli as catalog_cli

    parser = argparse.ArgumentParser(prog="theseus-ops")
    catalog_cli.add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["catalog", "show", "m", "1"])
    assert (args.command, args.catalog_command, args.name) == ("catalog", "show", "m")


# ------------------------------------------------------------------------ errors at the edges

class _NotJson(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b"<html>this is not the MLflow you are looking for</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def not_json_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotJson)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_malformed_tracking_uris_are_one_line(not_json_server):
    one_error_line(cli("catalog", "--tracking-uri", "htp:/not a uri", "list"), "htp:/not a uri")
    one_error_line(cli("catalog", "--tracking-uri", "http://[::1", "list"), "http://[::1")
    one_error_line(cli("catalog", "--tracking-uri", not_json_server, "list"), not_json_server)


def test_landing_errors_are_one_line(w, tmp_path, moto_endpoint):  # noqa: F811
    land = ["catalog", "land", "--family", "llama", "--release", "r1", "--model-dir", w.src]
    one_error_line(cli(*land, "--landing-url", "s3://bucket/p", "--endpoint-url", "not-a-url"), "not-a-url")
    one_error_line(cli(*land, "--landing-url", "s3://no-such-bucket-theseus/p", "--endpoint-url", moto_endpoint),
                   "no-such-bucket-theseus")


def test_programming_errors_are_not_hidden():
    """The guard is for the outside world; a TypeError is a bug and must stay a traceback."""
    from theseus_ops.cli import _edge_errors

    assert issubclass(OSError, _edge_errors()) and issubclass(ValueError, _edge_errors())
    for bug in (TypeError, AttributeError, KeyError, NameError, AssertionError):
        assert not issubclass(bug, _edge_errors())


# ----------------------------------------------------------------------------- 8. SIGTERM

@pytest.fixture(scope="module")
def big(tmp_path_factory) -> SimpleNamespace:
    """A ~80 MB Llama in 10 MB shards and a full task vector for it: writes take long enough to cut."""
    root = tmp_path_factory.mktemp("sigterm")
    config = tiny.llama_config(hidden=512, inter=1024, layers=4, heads=8, kv=8, vocab=8192)
    model = tiny.build(config, seed=0)
    model.save_pretrained(str(root / "base"), max_shard_size="10MB")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    return SimpleNamespace(root=root, base=root / "base",
                           tv=tiny.save_delta(tiny.random_delta(state, seed=2), root / "tv.safetensors"))


def _terminate_mid_write(argv: list, out: Path, ready) -> subprocess.CompletedProcess:
    """Start the CLI, send SIGTERM as soon as ``ready(staging folders)`` holds, and wait for it."""
    proc = subprocess.Popen([CLI, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=ENV)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            stages = list(out.parent.glob(f".{out.name}.*.tmp"))
            if stages and ready(stages):
                proc.send_signal(signal.SIGTERM)
                break
            time.sleep(0.002)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _assert_terminated_cleanly(proc: subprocess.CompletedProcess, folder: Path, *absent: Path) -> None:
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("theseus-ops: terminated"), proc.stderr
    for path in absent:
        assert not path.exists(), f"{path} was left behind"
    assert sorted(p.name for p in folder.iterdir()) == [], f"left behind: {sorted(folder.iterdir())}"


def test_sigterm_during_apply_leaves_nothing(big, tmp_path):
    out = tmp_path / "merged"

    def some_shard_written(stages):
        return any(any(stage.rglob("*.safetensors")) for stage in stages)

    proc = _terminate_mid_write(apply(SimpleNamespace(src=big.base, tv=big.tv), out), out, some_shard_written)
    _assert_terminated_cleanly(proc, tmp_path, out)


def test_sigterm_during_transport_leaves_no_output_and_no_report(big, tmp_path):
    out, report = tmp_path / "tv-b.safetensors", tmp_path / "report.json"
    argv = ["transport", "--source-base", big.base, "--target-base", big.base, "--task-vector", big.tv,
            "--method", "naive", "--report", report, "--out", out]
    proc = _terminate_mid_write(argv, out, lambda stages: True)
    _assert_terminated_cleanly(proc, tmp_path, out, report)


# ------------------------------------------------------------------- 11. modes and -q

@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_umask_mode(w, tmp_path, capsys, umask):
    previous = os.umask(umask)
    try:
        assert run(capsys, apply(w, tmp_path / "merged"))[0] == 0
        assert run(capsys, transport(w, tmp_path / "tv-b.safetensors", "--report", tmp_path / "r.json"))[0] == 0
    finally:
        os.umask(previous)
    files = [tmp_path / "tv-b.safetensors", tmp_path / "r.json", *(tmp_path / "merged").iterdir()]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o777 & ~umask


def test_quiet_prints_nothing_on_success(w, tmp_path):
    """Model loading (transformers' progress bars and load reports) and the summary lines: all silent."""
    done = cli("-q", "prepare", "--source-base", w.src, "--target-base", w.tgt, "--calibration", w.cal,
               "--device", "cpu", "--out", tmp_path / "pair.alignment")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    done = cli("-q", "apply", "--base", w.tgt, "--task-vector", w.tv, "--out", tmp_path / "merged")
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_quiet_catalog_commands_print_nothing_on_success(mlflow_sqlite, tmp_path):  # noqa: F811
    """MLflow's run links, upload progress bars and logs go away with -q; the JSON result stays on stdout."""
    from tests.catalog_support import make_base

    base = make_base(tmp_path / "base")
    base_line = f"quiet-{os.getpid()}"
    landing = ["--landing-url", str(tmp_path / "landing")]
    done = cli("-q", "catalog", "land", "--family", base_line, "--release", "r1", "--model-dir", base, *landing)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = cli("-q", "catalog", "--tracking-uri", mlflow_sqlite.url, "register-base", "--family", base_line,
               "--release", "r1", "--from-landing", *landing)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert json.loads(done.stdout)["created"] is True


def test_an_owned_file_is_replaced_whole_or_kept(tmp_path):
    """``replacing`` (caches, plots, a file landing zone): the new content replaces the old in one rename, in
    the umask's mode; a writer that fails leaves the old file and no temporary behind."""
    from theseus_ops.io.atomic import replacing

    dest = tmp_path / "cache" / "plot.png"
    with replacing(dest, ".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == dest.parent
        tmp.write_bytes(b"one")
    previous = os.umask(0o027)
    try:
        with pytest.raises(RuntimeError), replacing(dest, ".png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
        assert dest.read_bytes() == b"one" and [p.name for p in dest.parent.iterdir()] == ["plot.png"]
        with replacing(dest, ".png") as tmp:
            tmp.write_bytes(b"two")
            os.chmod(tmp, 0o600)  # as safetensors' writer leaves it
    finally:
        os.umask(previous)
    assert dest.read_bytes() == b"two" and stat.S_IMODE(dest.stat().st_mode) == 0o666 & ~0o027
    assert [p.name for p in dest.parent.iterdir()] == ["plot.png"]
