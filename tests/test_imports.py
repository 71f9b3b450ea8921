"""What each command imports before it has parsed its flags: `--help` must not wait for torch, and
the leaderboard export needs neither torch nor transformers."""
import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "sklearn", "scipy")
SHOW_IMPORTS = """
import json, runpy, sys
sys.argv = ["prog", *sys.argv[2:]]
try:
    runpy.run_module(MODULE, run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(name for name in HEAVY if name in sys.modules)))
"""


def heavy_imports(module, *argv):
    code = SHOW_IMPORTS.replace("MODULE", repr(module)).replace("HEAVY", repr(HEAVY))
    result = subprocess.run([sys.executable, "-c", code, module, *argv], capture_output=True, text=True)
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("module,allowed", [
    ("stilts.cli.train", {"transformers"}),  # its argument parser; transformers' modules load lazily
    ("stilts.cli.run", {"transformers"}),
    ("stilts.cli.evaluate", set()),
    ("stilts.cli.format_for_glue", set()),
    ("stilts.cli.make_submission", set()),
    ("stilts.cli.rank", set()),
    ("stilts.cli.download_glue", set()),
])
def test_help_imports_no_torch(module, allowed):
    assert set(heavy_imports(module, "--help")) <= allowed


def test_leaderboard_export_needs_neither_torch_nor_transformers(tmp_path):
    (tmp_path / "IN").mkdir()
    assert heavy_imports("stilts.cli.make_submission", str(tmp_path / "IN"), str(tmp_path / "OUT")) == []
    assert (tmp_path / "OUT" / "AX.tsv").is_file()  # it did export (the templates), then refused to zip
