"""The data files that ship with stilts: default BERT configs and vocabularies (cache/bert_metadata/),
submission templates (cache/submission_template/) and adapter configs (configs/).

git holds them once, at the repository root. A wheel carries them inside the stilts package
(setup.py maps the subpackages stilts.cache and stilts.configs onto those folders), so an
installed stilts finds stilts/cache/... beside its modules. A clone, run from source or installed
editable, has no such folders in the package, so the repository's own cache/ and configs/ are used.
"""
import importlib.resources
import os

_PACKAGE = os.fspath(importlib.resources.files("stilts"))  # stilts is always installed as plain files
DATA_ROOT = _PACKAGE if os.path.isdir(os.path.join(_PACKAGE, "configs")) else os.path.dirname(_PACKAGE)


def data_path(*parts):
    """Path of a shipped data file or folder, e.g. data_path("configs", "minilm-adapter.json")."""
    return os.path.join(DATA_ROOT, *parts)
