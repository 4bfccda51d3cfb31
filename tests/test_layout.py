"""The tests mirror the package: every module under aurl/ has its own test module, or an entry in EXEMPT
saying why it has none (README, Layout). A new module without tests, a test module renamed away from its
module, or an exemption left behind after its module got tests or went away fails here, naming the module.

The test module of aurl/<pkg>/<name>.py is tests/test_<name>.py; when two modules share a name
(model/checkpoint.py and train/checkpoint.py), tests/test_<pkg>_<name>.py. A top-level aurl/<name>.py is
always tests/test_<name>.py. Feature and integration modules (test_train_pipeline, test_elastic, ...) sit
beside these; they do not count for a module."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import aurl

PACKAGE = Path(aurl.__file__).parent
TESTS = Path(__file__).parent

# modules without a test module of their own, each with the reason
EXEMPT = {
    "aurl/__init__.py": "the package marker (no code)",
    "aurl/data/__init__.py": "the package marker (no code)",
    "aurl/model/__init__.py": "re-exports only",
    "aurl/evaluate/__init__.py": "re-exports only",
    "aurl/train/__init__.py": "re-exports only",
    # the commands: run end to end by the feature tests
    "aurl/data/__main__.py": "the data command: test_cache (exit codes, summary), test_bad_input",
    "aurl/evaluate/__main__.py": "the evaluate command: test_evaluate (its tiny run folder), test_bad_input",
    "aurl/train/__main__.py": "the train command: test_train_pipeline, test_state, test_plan, test_bad_input",
    # a section's dataclass and its checks: probed key by key (the config_keys modules share one run)
    "aurl/model/config.py": "the model: section, every key probed by test_config_keys_model",
    "aurl/evaluate/config.py": "the eval options, every key probed by test_config_keys_eval",
}


def package_modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py"))


def expected_test_module(module: str, modules: list[str]) -> str:
    """The file name of `module`'s test module (aurl/x/y.py -> test_y.py, or test_x_y.py on a name clash)."""
    path = Path(module)
    stems = Counter(Path(m).stem for m in modules)
    if path.parent.name == "aurl" or stems[path.stem] == 1:
        return f"test_{path.stem}.py"
    return f"test_{path.parent.name}_{path.stem}.py"


def test_every_module_has_its_test_module_or_a_reason():
    modules = package_modules()
    missing, stale, checked = [], [], 0
    for module in modules:
        name = expected_test_module(module, modules)
        has_tests = (TESTS / name).is_file()
        if module in EXEMPT:
            if has_tests:
                stale.append(f"{module}: exempt, but {name} exists (drop the exemption)")
        elif not has_tests:
            missing.append(f"{module}: no tests/{name} (write it, or add it to EXEMPT with the reason)")
        checked += 1
    stale += [f"{m}: exempt, but no such module" for m in EXEMPT if m not in modules]
    assert checked == len(modules) > 50, checked  # 64 modules on 2026-12-01
    assert not missing + stale, "\n".join(missing + stale)
