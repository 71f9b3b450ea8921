"""Download GLUE from the files its authors publish, check every file, and install each task atomically.

The sources are those of the GLUE baselines' `download_glue_data.py` (nyu-mll/GLUE-baselines): one
zip per task under `glue/data/` of dl.fbaipublicfiles.com, the diagnostic set as `glue/data/AX.tsv`,
and MRPC built from SentEval's copy of the Microsoft corpus (`senteval/senteval_data/`) with the
dev pairs of `glue/data/mrpc_dev_ids.tsv`. Every path is relative to one base URL, so that a mirror
(or a test's local server) serving the same paths replaces the official host.

A task is built in a hidden temporary folder inside the data folder and checked there: the zip
must read, hold the expected files, and every file must have its official row count. Only then
does it replace the task's folder, by renaming, so the data folder never holds a half-written task,
and a complete task is never downloaded again. What an incomplete folder holds beyond the download's
entries (a user's MNLI/tokenized/) moves into the new folder: the download deletes only what it replaces.
"""
import os
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from http.client import HTTPException

from stilts.errors import StiltsError
from stilts.tasks import get_task

OFFICIAL_BASE_URL = "https://dl.fbaipublicfiles.com"

# Data rows (non-blank lines, less the header) of every file a task's folder must hold: the official
# counts (GLUE paper, the Hugging Face `glue` dataset card, stilts.submission for the test sets).
# A task is complete when all its files have these counts; the tests swap in their own.
ROW_COUNTS = {
    "cola": {"train.tsv": 8551, "dev.tsv": 1043, "test.tsv": 1063},
    "sst": {"train.tsv": 67349, "dev.tsv": 872, "test.tsv": 1821},
    "mrpc": {"train.tsv": 3668, "dev.tsv": 408, "test.tsv": 1725},
    "stsb": {"train.tsv": 5749, "dev.tsv": 1500, "test.tsv": 1379},
    "qqp": {"train.tsv": 363846, "dev.tsv": 40430, "test.tsv": 390965},
    "mnli": {"train.tsv": 392702, "dev_matched.tsv": 9815, "dev_mismatched.tsv": 9832,
             "test_matched.tsv": 9796, "test_mismatched.tsv": 9847},
    "qnli": {"train.tsv": 104743, "dev.tsv": 5463, "test.tsv": 5463},
    "rte": {"train.tsv": 2490, "dev.tsv": 277, "test.tsv": 3000},
    "wnli": {"train.tsv": 635, "dev.tsv": 71, "test.tsv": 146},
    "ax": {"diagnostic.tsv": 1104},
}
TASK_NAMES = tuple(ROW_COUNTS)
HEADERLESS = {("cola", "train.tsv"), ("cola", "dev.tsv")}  # the only GLUE files without a header row

# Each zip holds one folder named like the task's official folder (CoLA/, SST-2/, QQP/, QNLI/, ...).
ARCHIVES = {
    "cola": "glue/data/CoLA.zip",
    "sst": "glue/data/SST-2.zip",
    "stsb": "glue/data/STS-B.zip",
    "qqp": "glue/data/QQP-clean.zip",
    "mnli": "glue/data/MNLI.zip",
    "qnli": "glue/data/QNLIv2.zip",
    "rte": "glue/data/RTE.zip",
    "wnli": "glue/data/WNLI.zip",
}
AX_SOURCE = "glue/data/AX.tsv"
# MRPC's sources, under the names the official script leaves them in MRPC/.
MRPC_SOURCES = {
    "msr_paraphrase_train.txt": "senteval/senteval_data/msr_paraphrase_train.txt",
    "msr_paraphrase_test.txt": "senteval/senteval_data/msr_paraphrase_test.txt",
    "dev_ids.tsv": "glue/data/mrpc_dev_ids.tsv",
}
MRPC_TEST_HEADER = "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"

TIMEOUT = 60  # seconds without a byte before a download counts as failed
CHUNK = 1 << 20


def parse_tasks(text):
    """The task names of a comma-separated list, each once, refusing a name GLUE does not publish."""
    names = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    if not names:
        raise StiltsError(f"no task named in {text!r}; GLUE's tasks are {', '.join(TASK_NAMES)}")
    for name in names:
        if name not in ROW_COUNTS:
            raise StiltsError(f"unknown task {name!r}; GLUE's tasks are {', '.join(TASK_NAMES)} "
                              f"(mnli brings mnli-mm's files)")
    return names


def download_glue(data_dir, names=TASK_NAMES, base_url=OFFICIAL_BASE_URL, report=print):
    """Make `data_dir/<official folder>` complete for each task, telling `report` (a line each)
    when a task starts downloading and when it is done or skipped.

    A task whose folder is complete is skipped without a request. A failure raises a StiltsError
    naming the task; that task's folder is left as it was (tasks finished before it stay installed).
    """
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file") or not base_url.isprintable():
        raise StiltsError(f"base URL {base_url!r}: expected an http://, https:// or file:// URL, "
                          "without control characters")
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise StiltsError(f"{data_dir}: cannot create the folder: {e.strerror}") from None
    for name in names:
        target = os.path.join(data_dir, get_task(name).folder)
        unchanged = f"{target} is as it was" if os.path.lexists(target) else f"{target} was not created"
        try:
            report(install_task(name, data_dir, base_url, report))
        except StiltsError as e:
            raise StiltsError(f"{name}: {e}; {unchanged}") from None
        except OSError as e:  # fetch words the network's errors: this one is the local disk's
            raise StiltsError(f"{name}: cannot write in {data_dir}: {e.strerror or e}; {unchanged}") from None


def install_task(name, data_dir, base_url, report):
    """Download, check and swap in one task unless its folder is complete; return the closing line."""
    folder = get_task(name).folder
    target = os.path.join(data_dir, folder)
    problems = folder_problems(name, target) if os.path.lexists(target) else None
    if problems == []:
        return f"{name}: skipped, {folder}/ is complete ({row_summary(name)})"
    if problems and (os.path.islink(target) or not os.path.isdir(target)):  # renaming it would lose it
        kind = "a symbolic link" if os.path.islink(target) else "a file"
        raise StiltsError(f"{target} is {kind}, not a folder the download can replace; move it away and run again")
    urls = source_urls(name, base_url)
    why = f"{folder}/ is incomplete ({'; '.join(problems)}); " if problems else ""
    report(f"{name}: {why}downloading {', '.join(urls)}")
    staging = tempfile.mkdtemp(dir=data_dir, prefix=f".{folder}.download-")
    try:
        built = build_task(name, folder, urls, staging)
        problems = folder_problems(name, built)
        if problems:
            raise StiltsError(f"the download does not match the official files: "
                              f"{'; '.join(problems)} (from {', '.join(urls)})")
        swap_in(built, target, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # with it go the entries the download replaced
    return f"{name}: done, {folder}/ has {row_summary(name)}"


def source_urls(name, base_url):
    """The URLs a task is built from, in the order build_task fetches them."""
    base = base_url.rstrip("/") + "/"
    if name == "mrpc":
        return [base + path for path in MRPC_SOURCES.values()]
    if name == "ax":
        return [base + AX_SOURCE]
    return [base + ARCHIVES[name]]


def build_task(name, folder, urls, staging):
    """Download a task's sources and lay out `staging/<folder>` as the official script does."""
    built = os.path.join(staging, folder)
    if name == "mrpc":
        os.mkdir(built)
        for filename, url in zip(MRPC_SOURCES, urls):
            fetch(url, os.path.join(built, filename))
        split_mrpc(built)
    elif name == "ax":
        os.mkdir(built)
        fetch(urls[0], os.path.join(built, "diagnostic.tsv"))
    else:
        archive = os.path.join(staging, "download.zip")
        fetch(urls[0], archive)
        extract_folder(archive, folder, staging, urls[0], ROW_COUNTS[name])
        os.remove(archive)
    return built


def fetch(url, path):
    """Save `url` to `path`, refusing an HTTP error, an unreachable server and a short transfer
    (urllib returns a body cut before its Content-Length as if it were whole)."""
    check_local_file(url)
    try:
        response = urllib.request.urlopen(url, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        e.close()
        raise StiltsError(f"{url}: HTTP {e.code} {one_line(e.reason)}") from None
    except urllib.error.URLError as e:
        reason = getattr(e.reason, "strerror", None) or e.reason
        raise StiltsError(f"{url}: cannot download: {one_line(reason)}") from None
    except (HTTPException, OSError, ValueError) as e:
        raise StiltsError(f"{url}: cannot download: {one_line(e)}") from None
    received = 0
    with response, open(path, "wb") as f:
        length = response.headers.get("Content-Length")
        while True:
            try:
                chunk = response.read(CHUNK)
            except (HTTPException, OSError) as e:
                raise StiltsError(f"{url}: the download broke off after {received} bytes: "
                                  f"{one_line(e) or type(e).__name__}") from None
            if not chunk:
                break
            f.write(chunk)
            received += len(chunk)
    if length is not None and length.isdigit() and received != int(length):
        raise StiltsError(f"{url}: truncated download: {received} of {length} bytes")


def check_local_file(url):
    """Refuse a file:// source that is not a regular file before urllib opens it: it would wait
    forever for a FIFO's writer, and read a device (/dev/zero) without end."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "file":
        return
    try:
        mode = os.stat(urllib.request.url2pathname(parts.path)).st_mode
    except OSError:
        return  # urllib reports it, in the words of a download
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise StiltsError(f"{url}: cannot download: {kind}, not a regular file")


def one_line(text):
    """An error text of urllib or http.client on one line: some hold newlines (a redirect loop's)."""
    return " ".join(str(text).split())


def extract_folder(archive, folder, staging, url, filenames):
    """Unpack the zip's `folder/` into staging, after checking that it holds every file in `filenames`.
    The whole folder is unpacked, as the official script does (some zips add an `original/` folder)."""
    prefix = folder + "/"
    try:
        with zipfile.ZipFile(archive) as z:
            members = [member for member in z.namelist() if member.startswith(prefix)]
            missing = [prefix + filename for filename in filenames if prefix + filename not in members]
            if missing:
                raise StiltsError(f"{url}: the archive has no {', '.join(missing)}")
            z.extractall(staging, members)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise StiltsError(f"{url}: not a readable zip archive (truncated or corrupt download?): {e}") from None
    except (NotImplementedError, RuntimeError) as e:  # a compression zipfile lacks, an encrypted member
        raise StiltsError(f"{url}: cannot unpack this zip archive ({e})") from None


def split_mrpc(folder):
    """Write MRPC's train/dev/test.tsv from the SentEval files in `folder`, as GLUE's script does:
    the pairs of dev_ids.tsv make dev.tsv and the others train.tsv, both under the source's header
    (its byte-order mark included); test.tsv replaces the test file's label column by a running index."""
    try:
        with open(os.path.join(folder, "dev_ids.tsv"), encoding="utf-8") as f:
            dev_ids = {tuple(line.strip().split("\t")) for line in f}
    except UnicodeDecodeError as e:
        raise StiltsError(f"dev_ids.tsv (mrpc_dev_ids.tsv): not UTF-8 text (byte {e.start})") from None
    header, rows = read_msr(os.path.join(folder, "msr_paraphrase_train.txt"))
    with open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8", newline="\n") as train, \
            open(os.path.join(folder, "dev.tsv"), "w", encoding="utf-8", newline="\n") as dev:
        train.write(header)
        dev.write(header)
        for fields in rows:
            (dev if tuple(fields[1:3]) in dev_ids else train).write("\t".join(fields) + "\n")
    _, rows = read_msr(os.path.join(folder, "msr_paraphrase_test.txt"))
    with open(os.path.join(folder, "test.tsv"), "w", encoding="utf-8", newline="\n") as test:
        test.write(MRPC_TEST_HEADER)
        for index, (_label, *pair) in enumerate(rows):
            test.write("\t".join([str(index), *pair]) + "\n")


def read_msr(path):
    """The header line (as read) and the five fields of every row of a SentEval MSR paraphrase file."""
    name = os.path.basename(path)
    rows = []
    try:
        with open(path, encoding="utf-8") as f:  # universal newlines: the CRLF of the corpus become \n
            header = f.readline()
            for lineno, line in enumerate(f, start=2):
                fields = line.strip().split("\t")
                if len(fields) != 5:
                    raise StiltsError(f"{name}:{lineno}: {len(fields)} tab-separated fields, expected 5 "
                                      f"(label, two ids, two sentences)")
                rows.append(fields)
    except UnicodeDecodeError as e:
        raise StiltsError(f"{name}: not UTF-8 text (byte {e.start})") from None
    return header, rows


def swap_in(built, target, staging):
    """Rename `built` to `target`. A folder already at `target` (incomplete) first gives `built` the
    entries the download does not provide, then moves into staging, to be deleted with it (only the
    entries the download replaced are left in it). If a step fails or is interrupted, everything
    moves back: the old folder is as it was, its modification time included."""
    if not os.path.lexists(target):
        os.replace(built, target)
        return
    old = os.stat(target)
    kept = []
    try:
        for entry in sorted(os.listdir(target)):
            if not os.path.lexists(os.path.join(built, entry)):
                os.replace(os.path.join(target, entry), os.path.join(built, entry))
                kept.append(entry)
        replaced = os.path.join(staging, "replaced")
        os.replace(target, replaced)
        try:
            os.replace(built, target)
        except BaseException:
            os.replace(replaced, target)
            raise
    except BaseException:
        for entry in reversed(kept):
            os.replace(os.path.join(built, entry), os.path.join(target, entry))
        os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
        raise


def folder_problems(name, folder):
    """What keeps `folder` from being a complete copy of the task: [] when every file is there
    with its official row count."""
    problems = []
    for filename, expected in ROW_COUNTS[name].items():
        path = os.path.join(folder, filename)
        if not os.path.isfile(path):
            problems.append(f"{filename} missing")
            continue
        try:
            rows = count_rows(path, header=(name, filename) not in HEADERLESS)
        except OSError as e:
            problems.append(f"{filename} unreadable ({e.strerror})")
            continue
        if rows != expected:
            problems.append(f"{filename} has {rows} data rows, expected {expected}")
    return problems


def count_rows(path, header):
    """A TSV file's data rows: its non-blank lines (blank ones are skipped by stilts.tasks too), less
    the header. Lines, not csv records: GLUE text holds unmatched quotes, which csv would join up."""
    with open(path, "rb") as f:
        lines = sum(1 for line in f if line.rstrip(b"\r\n"))
    return max(lines - header, 0)


def row_summary(name):
    """'train.tsv 2490, dev.tsv 277, test.tsv 3000 rows': the counts a complete folder has."""
    return ", ".join(f"{filename} {rows}" for filename, rows in ROW_COUNTS[name].items()) + " rows"
