"""stilts-download-glue against a local HTTP server serving tiny archives of GLUE's layout.

Nothing here reaches the internet: the server listens on 127.0.0.1, and ROW_COUNTS is set to the
tiny files' counts so that they count as complete tasks.
"""
import errno
import http.server
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import zipfile

import pytest

from conftest import FIXTURES, REPO
from stilts import glue_download
from stilts.cli import download_glue
from stilts.submission import LEADERBOARD
from stilts.tasks import get_task

RTE_FILES = {
    # an unmatched quote: a csv reader would join lines, the line count must not
    "train.tsv": 'index\tsentence1\tsentence2\tlabel\n0\tHe said "yes.\tHe agreed.\tentailment\n'
                 "1\tA dog barks.\tA cat barks.\tnot_entailment\n2\tIt rains.\tIt is wet.\tentailment\n",
    "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n1\tC.\tD.\tnot_entailment\n",
    "test.tsv": "index\tsentence1\tsentence2\n0\tE.\tF.\n1\tG.\tH.\n",
}
MNLI_FILES = ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv", "test_matched.tsv", "test_mismatched.tsv")
MSR_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
MSR_TRAIN = MSR_HEADER + ("1\t101\t102\tThe cat sat .\tA cat sat .\r\n"
                          '0\t201\t202\tIt rained " hard .\tIt was dry .\r\n'
                          "1\t301\t302\tShe left .\tShe went away .  \r\n"
                          "0\t401\t402\tUp .\tDown .\r\n")
MSR_TEST = MSR_HEADER + "1\t501\t502\tX .\tY .\r\n0\t601\t602\tP .\tQ .\r\n"
MRPC_DEV_IDS = "201\t202\r\n401\t402\r\n"
AX_TSV = "index\tsentence1\tsentence2\n0\tA man sleeps.\tA man is awake.\n1\tIt is red.\tIt has a colour.\n"

# What GLUE's script makes of the SentEval files: the header kept as read, rows stripped, \n endings.
MRPC_HEADER = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_EXPECTED = {
    "train.tsv": MRPC_HEADER + "1\t101\t102\tThe cat sat .\tA cat sat .\n1\t301\t302\tShe left .\tShe went away .\n",
    "dev.tsv": MRPC_HEADER + '0\t201\t202\tIt rained " hard .\tIt was dry .\n0\t401\t402\tUp .\tDown .\n',
    "test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t501\t502\tX .\tY .\n1\t601\t602\tP .\tQ .\n",
}


def make_zip(folder, files, extra=()):
    """A zip of `folder/<name>` members, as GLUE's archives are laid out, plus `extra` members."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(f"{folder}/{name}", data)
        for name in extra:
            z.writestr(name, "junk")
    return buffer.getvalue()


def data_rows(text, header=True):
    return sum(1 for line in text.splitlines() if line) - header


def read_fixture(folder, name):
    with open(os.path.join(FIXTURES, folder, name), "rb") as f:
        return f.read()


def served_files():
    mnli = {name: read_fixture("MNLI", name) for name in MNLI_FILES}
    return {
        "/glue/data/RTE.zip": make_zip("RTE", RTE_FILES, extra=["__MACOSX/RTE/._train.tsv"]),
        "/glue/data/MNLI.zip": make_zip("MNLI", {**mnli, "README.txt": "MNLI"}),
        "/glue/data/AX.tsv": AX_TSV.encode(),
        "/glue/data/mrpc_dev_ids.tsv": MRPC_DEV_IDS.encode(),
        "/senteval/senteval_data/msr_paraphrase_train.txt": MSR_TRAIN.encode(),
        "/senteval/senteval_data/msr_paraphrase_test.txt": MSR_TEST.encode(),
    }


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files; server.faults turns a path into an HTTP error code, a truncated body, a
    redirect to itself ("loop") or half a body and then silence until server.release ("stall")."""

    def do_GET(self):
        self.server.requests.append(self.path)
        fault = self.server.faults.get(self.path)
        body = self.server.files.get(self.path)
        if body is None or isinstance(fault, int):
            self.send_error(fault or 404)
            return
        if fault == "loop":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if fault in ("truncate", "stall") else body)
        if fault == "stall":
            self.wfile.flush()
            self.server.stalled.set()
            self.server.release.wait(60)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.files, httpd.faults, httpd.requests = served_files(), {}, []
    httpd.stalled, httpd.release = threading.Event(), threading.Event()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def tiny_counts(monkeypatch):
    """The served files' row counts in place of the official ones."""
    counts = {
        "rte": {name: data_rows(text) for name, text in RTE_FILES.items()},
        "mnli": {name: data_rows(read_fixture("MNLI", name).decode()) for name in MNLI_FILES},
        "mrpc": {"train.tsv": 2, "dev.tsv": 2, "test.tsv": 2},
        "ax": {"diagnostic.tsv": 2},
    }
    for name, files in counts.items():
        monkeypatch.setitem(glue_download.ROW_COUNTS, name, files)
    return counts


def run_cli(capsys, *argv):
    try:
        download_glue.main([str(a) for a in argv])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def command(*argv):
    """The real command as a process, for what an in-process call cannot show (signals, a hang)."""
    return [sys.executable, "-m", "stilts.cli.download_glue", *map(str, argv)]


def snapshot(folder):
    """Every path under `folder` with its bytes (None for folders) and modification time."""
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            data = None if name in dirs else open(path, "rb").read()
            state[os.path.relpath(path, folder)] = (data, os.stat(path).st_mtime_ns)
    return state


def assert_one_line_error(status, err, *words):
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


def test_download_writes_the_official_layout(server, tiny_counts, tmp_path, capsys):
    data = tmp_path / "glue"
    status, out, err = run_cli(capsys, "--data_dir", data, "--tasks", "rte,MNLI,mrpc,ax", "--base_url", server.url)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["rte", "rte", "mnli", "mnli", "mrpc", "mrpc", "ax", "ax"]
    assert lines[0] == f"rte: downloading {server.url}/glue/data/RTE.zip"
    assert lines[1] == "rte: done, RTE/ has train.tsv 3, dev.tsv 2, test.tsv 2 rows"
    assert sorted(os.listdir(data)) == ["MNLI", "MRPC", "RTE", "diagnostic"]  # no leftovers, no __MACOSX

    assert sorted(os.listdir(data / "RTE")) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert (data / "RTE" / "train.tsv").read_text() == RTE_FILES["train.tsv"]
    assert [e.label for e in get_task("rte").read("train", data / "RTE")] == \
        ["entailment", "not_entailment", "entailment"]
    for name in MNLI_FILES:
        assert (data / "MNLI" / name).read_bytes() == read_fixture("MNLI", name)
    assert (data / "MNLI" / "README.txt").exists()  # the whole folder of the zip, as the official script
    for task, split in [("mnli", "dev"), ("mnli-mm", "dev"), ("mnli-mm", "test")]:
        assert get_task(task).read(split, data / "MNLI")
    for name, text in MRPC_EXPECTED.items():
        assert (data / "MRPC" / name).read_bytes() == text.encode()
    assert [e.label for e in get_task("mrpc").read("dev", data / "MRPC")] == ["0", "0"]
    assert [e.text_a for e in get_task("mrpc").read("test", data / "MRPC")] == ["X .", "P ."]
    assert len(get_task("ax").read("test", data / "diagnostic")) == 2


def test_a_local_mirror_serves_as_well(tiny_counts, tmp_path, capsys):
    mirror = tmp_path / "mirror"
    for path, body in served_files().items():
        (mirror / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (mirror / path.lstrip("/")).write_bytes(body)
    status, out, err = run_cli(capsys, "--data_dir", tmp_path / "glue", "--tasks", "ax,mrpc",
                               "--base_url", mirror.as_uri())
    assert (status, err) == (0, "")
    assert (tmp_path / "glue" / "diagnostic" / "diagnostic.tsv").read_text() == AX_TSV
    assert (tmp_path / "glue" / "MRPC" / "test.tsv").read_text() == MRPC_EXPECTED["test.tsv"]


def test_rerun_skips_complete_tasks_without_a_request(server, tiny_counts, tmp_path, capsys):
    data = tmp_path / "glue"
    assert run_cli(capsys, "--data_dir", data, "--tasks", "rte,mrpc", "--base_url", server.url)[0] == 0
    before = snapshot(data)
    server.requests.clear()
    status, out, err = run_cli(capsys, "--data_dir", data, "--tasks", "rte,mrpc", "--base_url", server.url)
    assert (status, err) == (0, "")
    assert out.splitlines() == ["rte: skipped, RTE/ is complete (train.tsv 3, dev.tsv 2, test.tsv 2 rows)",
                                "mrpc: skipped, MRPC/ is complete (train.tsv 2, dev.tsv 2, test.tsv 2 rows)"]
    assert server.requests == []
    assert snapshot(data) == before


def incomplete_rte(folder):
    """An incomplete RTE/ that also holds what a user keeps there: a file and a folder of their own."""
    rte = folder / "RTE"
    (rte / "tokenized").mkdir(parents=True)
    (rte / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\tA.\tB.\tentailment\n")
    (rte / "notes.txt").write_text("mine")
    (rte / "tokenized" / "dev.tsv").write_text("a tokenized copy")
    return rte


def test_an_incomplete_folder_is_repaired_keeping_what_the_download_does_not_provide(
        server, tiny_counts, tmp_path, capsys):
    rte = incomplete_rte(tmp_path)
    status, out, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "rte", "--base_url", server.url)
    assert (status, err) == (0, "")
    assert out.splitlines()[0] == ("rte: RTE/ is incomplete (train.tsv has 1 data rows, expected 3; dev.tsv missing; "
                                   f"test.tsv missing); downloading {server.url}/glue/data/RTE.zip")
    assert sorted(os.listdir(tmp_path)) == ["RTE"]
    assert sorted(os.listdir(rte)) == ["dev.tsv", "notes.txt", "test.tsv", "tokenized", "train.tsv"]
    assert (rte / "train.tsv").read_text() == RTE_FILES["train.tsv"]
    assert (rte / "notes.txt").read_text() == "mine"
    assert (rte / "tokenized" / "dev.tsv").read_text() == "a tokenized copy"


@pytest.mark.parametrize("step", ["keep", "swap"])
def test_a_failed_swap_puts_the_old_folder_back(server, tiny_counts, tmp_path, capsys, monkeypatch, step):
    """Moving the user's second entry into the new folder fails, or renaming the new folder in does:
    the entries already moved go back, and the old folder is as it was."""
    incomplete_rte(tmp_path)
    before = snapshot(tmp_path)
    replace = os.replace

    def failing_replace(src, dst):
        if (step == "keep" and src == str(tmp_path / "RTE" / "tokenized")) or \
                (step == "swap" and dst == str(tmp_path / "RTE") and src.endswith(os.sep + "RTE")):  # not the undo
            raise OSError(errno.EACCES, "Permission denied")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "rte", "--base_url", server.url)
    assert_one_line_error(status, err, "rte:", "Permission denied", "RTE is as it was")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["file", "symbolic link"])
def test_a_task_name_taken_by_a_file_or_link_is_refused(server, tiny_counts, tmp_path, capsys, kind):
    data = tmp_path / "glue"
    data.mkdir()
    if kind == "file":
        (data / "RTE").write_text("a file of mine")
    else:
        incomplete_rte(tmp_path)
        (data / "RTE").symlink_to(tmp_path / "RTE")
    before = snapshot(tmp_path)
    status, _, err = run_cli(capsys, "--data_dir", data, "--tasks", "rte", "--base_url", server.url)
    assert_one_line_error(status, err, "rte:", f"is a {kind}, not a folder", "is as it was")
    assert (snapshot(tmp_path), server.requests) == (before, [])


@pytest.fixture
def earlier_state(server, tiny_counts, tmp_path, capsys):
    """A data folder with a complete diagnostic/ and an incomplete RTE/, and its snapshot."""
    assert run_cli(capsys, "--data_dir", tmp_path, "--tasks", "ax", "--base_url", server.url)[0] == 0
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "train.tsv").write_text("half")
    return snapshot(tmp_path)


def test_a_truncated_download_changes_nothing(server, earlier_state, tmp_path, capsys):
    server.faults["/glue/data/RTE.zip"] = "truncate"
    status, out, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "ax,rte", "--base_url", server.url)
    assert_one_line_error(status, err, "rte:", f"{server.url}/glue/data/RTE.zip", "truncated download")
    assert out.splitlines()[0].startswith("ax: skipped")
    assert snapshot(tmp_path) == earlier_state


def test_a_cut_zip_changes_nothing(server, earlier_state, tmp_path, capsys):
    whole = server.files["/glue/data/RTE.zip"]
    server.files["/glue/data/RTE.zip"] = whole[:len(whole) // 2]
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "rte", "--base_url", server.url)
    assert_one_line_error(status, err, "rte:", "RTE.zip", "not a readable zip archive")
    assert snapshot(tmp_path) == earlier_state


@pytest.mark.parametrize("code", [500, 404])
def test_a_server_error_changes_nothing(server, earlier_state, tmp_path, capsys, code):
    # MRPC's last source fails after its first two arrived: they go with the temporary folder
    server.faults["/glue/data/mrpc_dev_ids.tsv"] = code
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "mrpc", "--base_url", server.url)
    assert_one_line_error(status, err, "mrpc:", f"{server.url}/glue/data/mrpc_dev_ids.tsv", f"HTTP {code}")
    assert snapshot(tmp_path) == earlier_state


def test_a_redirect_loop_is_one_line(server, tmp_path, capsys):
    server.faults["/glue/data/AX.tsv"] = "loop"  # urllib's message for it holds two newlines
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "ax", "--base_url", server.url)
    assert_one_line_error(status, err, "ax:", f"{server.url}/glue/data/AX.tsv", "HTTP 302", "infinite loop")
    assert os.listdir(tmp_path) == []


def test_sigterm_mid_download_removes_the_download_folder(server, tmp_path):
    server.faults["/glue/data/AX.tsv"] = "stall"
    env = dict(os.environ, no_proxy="127.0.0.1")
    process = subprocess.Popen(command("--data_dir", tmp_path, "--tasks", "ax", "--base_url", server.url),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        assert server.stalled.wait(30), "the download never started"
        assert [name for name in os.listdir(tmp_path) if name.startswith(".diagnostic.download-")]
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 130
    assert err == "interrupted\n"
    assert out == f"ax: downloading {server.url}/glue/data/AX.tsv\n"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("kind", ["FIFO", "folder"])
def test_a_file_mirror_entry_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    """Refused before reading: opening a FIFO would wait for a writer forever (the timeout makes that
    a failure, not a hang)."""
    source = tmp_path / "mirror" / "glue" / "data" / "AX.tsv"
    source.parent.mkdir(parents=True)
    os.mkfifo(source) if kind == "FIFO" else source.mkdir()
    result = subprocess.run(command("--data_dir", tmp_path / "glue", "--tasks", "ax",
                                    "--base_url", (tmp_path / "mirror").as_uri()),
                            capture_output=True, text=True, cwd=REPO, timeout=20)
    assert_one_line_error(result.returncode, result.stderr, "ax:", source.as_uri(), f"a {kind}, not a regular file")
    assert os.listdir(tmp_path / "glue") == []


def test_a_refused_connection_is_one_line(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "ax", "--base_url", f"http://127.0.0.1:{port}")
    assert_one_line_error(status, err, "ax:", f"http://127.0.0.1:{port}/glue/data/AX.tsv", "cannot download")
    assert os.listdir(tmp_path) == []


def test_a_wrong_row_count_changes_nothing(server, earlier_state, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(glue_download.ROW_COUNTS["rte"], "dev.tsv", 277)
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "rte", "--base_url", server.url)
    assert_one_line_error(status, err, "rte:", "dev.tsv has 2 data rows, expected 277", "RTE.zip")
    assert snapshot(tmp_path) == earlier_state


def test_an_archive_without_a_split_changes_nothing(server, tiny_counts, tmp_path, capsys):
    server.files["/glue/data/RTE.zip"] = make_zip("RTE", {"train.tsv": RTE_FILES["train.tsv"]})
    status, _, err = run_cli(capsys, "--data_dir", tmp_path, "--tasks", "rte", "--base_url", server.url)
    assert_one_line_error(status, err, "rte:", "the archive has no RTE/dev.tsv, RTE/test.tsv")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv, words", [
    (["--tasks", "rte,snli"], ["unknown task 'snli'", "cola, sst"]),
    (["--tasks", ","], ["no task named"]),
    (["--base_url", "dl.fbaipublicfiles.com"], ["expected an http://"]),
    (["--base_url", "http://mirror\n"], ["'http://mirror\\n'", "without control characters"]),
])
def test_bad_flags_are_refused_before_any_request(server, tmp_path, capsys, argv, words):
    status, out, err = run_cli(capsys, "--data_dir", tmp_path / "glue", *argv)
    assert_one_line_error(status, err, *words)
    assert (out, server.requests, os.listdir(tmp_path)) == ("", [], [])


def test_a_data_dir_that_is_a_file_is_refused(server, tmp_path, capsys):
    (tmp_path / "glue").write_text("a file")
    status, _, err = run_cli(capsys, "--data_dir", tmp_path / "glue", "--tasks", "ax", "--base_url", server.url)
    assert_one_line_error(status, err, "--data_dir", "is a file")
    assert server.requests == []


def test_the_command_reports_without_a_traceback(server, tmp_path):
    """As a process, with the official counts: the tiny RTE is refused in one line."""
    env = dict(os.environ, no_proxy="127.0.0.1")
    result = subprocess.run(command("--data_dir", tmp_path, "--tasks", "rte", "--base_url", server.url),
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert_one_line_error(result.returncode, result.stderr, "rte:", "train.tsv has 3 data rows, expected 2490")
    assert result.stdout == f"rte: downloading {server.url}/glue/data/RTE.zip\n"
    assert os.listdir(tmp_path) == []


def test_the_tables_cover_what_the_readers_open():
    """Every file a task reader opens is downloaded and counted, with the header its layout expects,
    and the test counts are those the leaderboard export checks."""
    readers = {name: [get_task(name)] for name in glue_download.TASK_NAMES}
    readers["mnli"].append(get_task("mnli-mm"))
    for name, tasks in readers.items():
        counted = glue_download.ROW_COUNTS[name]
        for task in tasks:
            for split, filename in task.files.items():
                assert filename in counted, (name, filename)
                assert task.layouts[split].header == ((name, filename) not in glue_download.HEADERLESS)
        sources = glue_download.source_urls(name, "http://mirror")
        assert sources and all(url.startswith("http://mirror/") for url in sources)
    for entry in LEADERBOARD:
        test_file = get_task(entry.task).files["test"]
        assert glue_download.ROW_COUNTS[entry.run_task][test_file] == entry.test_rows, entry.name
