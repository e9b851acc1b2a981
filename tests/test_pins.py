"""Dependencies are pinned exactly, and the conda environments agree with the pip lock."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _req(path):
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([A-Za-z0-9_.+\-]+)", line)
        assert m, f"{path.name}: {line!r} is not pinned with =="
        out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_requirements_pinned_and_in_lock():
    direct, lock = _req(ROOT / "requirements.txt"), _req(ROOT / "requirements.lock")
    for name, version in direct.items():
        assert lock.get(name) == version, f"{name}: requirements.txt {version} vs lock {lock.get(name)}"
    assert direct["torch"] == "2.14.1" and direct["torchvision"] == "0.29.1"


def test_conda_envs_pinned_and_agree_with_lock():
    lock = _req(ROOT / "requirements.lock")
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs
    for env in envs:
        spec = yaml.safe_load(env.read_text())
        pip = []
        for dep in spec["dependencies"]:
            if isinstance(dep, dict):
                pip += dep["pip"]
            else:
                assert re.fullmatch(r"[a-z0-9_.\-]+=\d[\w.]*", dep), f"{env.name}: conda dep {dep!r} not pinned"
        assert pip, f"{env.name} installs nothing"
        for line in pip:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
            assert m, f"{env.name}: {line!r} not pinned with =="
            name = m.group(1).lower().replace("_", "-")
            assert lock.get(name) == m.group(2), f"{env.name}: {name} {m.group(2)} vs lock {lock.get(name)}"


def test_every_rule_env_exists():
    for smk in (ROOT / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (smk.parent / env).resolve().exists(), f"{smk.name}: {env} missing"
