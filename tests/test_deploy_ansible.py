"""The Ansible roles in deploy/ansible: lint, syntax, and a real run into a sandbox, twice.

The sandbox run plays ``site.yml`` as root against two inventory hosts that both use the local
connection: ``master`` (a minimal OMERO.server directory with a fake ``bin/omero`` that records
``config set`` calls) and ``gpu1`` (the GPU node, with its own minimal OMERO.server).  Every path
lives under a temporary prefix; no service is started and no OS package installed.  The
processor's virtual environment is real: zeroc-ice from the cached wheel, omero-py, torch
(``torch==2.13.0``, the local CPU wheel), dlcore from this checkout, and the models cloned from a
local git repository at a pinned commit.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "deploy" / "ansible"
BIN = Path(sys.executable).parent
WHEEL_CACHE = Path(os.environ.get("DLCORE_WHEEL_CACHE", Path.home() / ".cache" / "dlcore" / "wheels"))

FAKE_OMERO = r"""#!/usr/bin/env python3
# Fake OMERO CLI for the sandbox: "config get/set" on a JSON file in $OMERODIR, calls logged.
import json, os, pathlib, sys
root = pathlib.Path(os.environ["OMERODIR"])
store = root / "etc" / "fake-config.json"
config = json.loads(store.read_text()) if store.exists() else {}
args = sys.argv[1:]
with open(root / "omero-calls.log", "a") as log:
    log.write(" ".join(args) + "\n")
if args[:2] == ["config", "get"]:
    if args[2] in config:
        print(config[args[2]])
elif args[:2] == ["config", "set"]:
    config[args[2]] = args[3]
    store.write_text(json.dumps(config, indent=1))
else:
    sys.exit("fake omero: unsupported command %r" % args)
"""


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed; install the deploy extra: pip install -e '.[deploy]'")
    return found


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOME=str(Path(os.environ.get("TMPDIR", "/tmp")) / "dlcore-ansible-home"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.pop("DLCORE_CONFIG", None)
    return env


def _ice_wheel() -> Path:
    """The cached zeroc-ice wheel for this Python, built once with tools/build_ice_wheel.sh."""
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    found = sorted(WHEEL_CACHE.glob(f"zeroc_ice-3.6.5-{tag}-*.whl"))
    if found:
        return found[-1]
    done = subprocess.run(
        ["bash", str(REPO / "tools" / "build_ice_wheel.sh")],
        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=1800,
    )
    assert done.returncode == 0, f"building the zeroc-ice wheel failed:\n{done.stderr[-3000:]}"
    return Path(done.stdout.strip().splitlines()[-1])


def test_ansible_lint_has_no_findings():
    done = subprocess.run(
        [_tool("ansible-lint"), "--offline", "--nocolor", "-q"],
        cwd=ANSIBLE_DIR, env=_env(), capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, f"ansible-lint findings:\n{done.stdout}\n{done.stderr}"


def test_playbook_syntax():
    done = subprocess.run(
        [_tool("ansible-playbook"), "--syntax-check", "-i", "inventory.example.yml", "site.yml"],
        cwd=ANSIBLE_DIR, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _fake_omero_server(root: Path) -> Path:
    for sub in ("etc/grid", "lib/scripts/omero/util_scripts", "bin", "var/log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    cli = root / "bin" / "omero"
    cli.write_text(FAKE_OMERO.replace("/usr/bin/env python3", sys.executable, 1))
    cli.chmod(0o755)
    return root


def _git(*args: str, cwd: Path) -> str:
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.org",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.org")
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


def _models_repo(root: Path) -> tuple[Path, str]:
    model = root / "nuclei_unet_fake"
    model.mkdir(parents=True)
    (model / "rdf.yaml").write_text(textwrap.dedent("""\
        format_version: 0.5.3
        type: model
        name: Nuclei U-Net (sandbox fake)
        weights:
          pytorch_state_dict:
            source: weights.pt
        """))
    (model / "weights.pt").write_bytes(b"not real weights")
    _git("init", "-q", "-b", "main", cwd=root)
    _git("add", ".", cwd=root)
    _git("commit", "-q", "-m", "one model", cwd=root)
    pinned = _git("rev-parse", "HEAD", cwd=root).strip()
    (model / "later.txt").write_text("a commit after the pinned one\n")
    _git("add", ".", cwd=root)
    _git("commit", "-q", "-m", "later", cwd=root)
    return root, pinned


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Run site.yml into a sandbox: twice, then in check mode; yield the paths and the outputs."""
    tmp = tmp_path_factory.mktemp("deploy")
    prefix = tmp / "root"
    node_server = _fake_omero_server(prefix / "opt" / "omero" / "server" / "OMERO.server")
    master_server = _fake_omero_server(tmp / "master" / "OMERO.server")
    stale = master_server / "lib" / "scripts" / "Deep_Learning"
    stale.mkdir(parents=True)
    (stale / "Retired_Model.py").write_text("# a script an earlier dlcore shipped\n")
    (stale / "Site_Local.py").write_text("# the site's own script, kept by dlcore_scripts_keep\n")

    scripts_src = tmp / "scripts-src"
    scripts_src.mkdir()
    shipped = sorted((REPO / "omero_scripts" / "Deep_Learning").glob("*.py"))
    for script in shipped:
        shutil.copy(script, scripts_src / script.name)
    (scripts_src / "Sandbox_Segment.py").write_text("# stands in for a shipped script\n")
    models_repo, pinned = _models_repo(tmp / "models-repo")

    inventory = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
                "ansible_become": False,
                "dlcore_prefix": str(prefix),
            },
            "children": {
                "omero_master": {"hosts": {"master": {
                    "omero_server_dir": str(master_server),
                    "dlcore_scripts_src": str(scripts_src),
                    "dlcore_scripts_owner": "root",
                    "dlcore_scripts_keep": ["Site_Local.py"],
                }}},
                "dlcore_gpu_nodes": {"hosts": {"gpu1": {"dlcore_omero_node_name": "gpu1"}}},
            },
        }
    }
    extra = {
        "dlcore_user": "root",
        "dlcore_create_user": False,
        "dlcore_manage_services": False,
        "dlcore_install_os_packages": False,
        "dlcore_python": sys.executable,
        "dlcore_ice_wheel": str(_ice_wheel()),
        "dlcore_source": str(REPO),
        "dlcore_extras": ["omero"],
        "dlcore_torch_spec": "torch==2.13.0",
        "dlcore_torch_index_url": "",
        "dlcore_models_repo": str(models_repo),
        "dlcore_models_version": pinned,
        "dlcore_omero_node_cli": str(node_server / "bin" / "omero"),
        "dlcore_omero_node_endpoints": "tcp -h 192.0.2.11",
        "dlcore_omero_node_config": {"omero.scripts.timeout": 86400000},
        "dlcore_gpu_slots_per_gpu": 2,
        "dlcore_trained_models_dir": str(tmp / "shared" / "trained-models"),
    }
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "extra.json").write_text(json.dumps(extra))
    runs = []
    for mode in ([], [], ["--check", "--diff"]):  # install, again (idempotence), dry run
        done = subprocess.run(
            [_tool("ansible-playbook"), "-i", str(tmp / "inventory.json"), "-e", f"@{tmp / 'extra.json'}",
             *mode, str(ANSIBLE_DIR / "site.yml")],
            cwd=ANSIBLE_DIR, env=_env(), capture_output=True, text=True, timeout=1200,
        )
        assert done.returncode == 0, f"ansible-playbook failed:\n{done.stdout[-8000:]}\n{done.stderr[-3000:]}"
        runs.append(done.stdout)
    yield {
        "prefix": prefix, "node_server": node_server, "master_server": master_server,
        "venv": prefix / "opt" / "dlcore" / "venv", "models_pinned": pinned,
        "shipped": [s.name for s in shipped] + ["Sandbox_Segment.py"], "runs": runs,
        "trained": tmp / "shared" / "trained-models",
    }


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def test_first_run_changes_and_second_run_changes_nothing(sandbox):
    first, second, dry = (_recap(run) for run in sandbox["runs"])
    assert set(first) == {"master", "gpu1"}
    assert first["gpu1"]["changed"] > 5 and first["master"]["changed"] >= 2
    assert {host: counts["changed"] for host, counts in second.items()} == {"master": 0, "gpu1": 0}, sandbox["runs"][1][-3000:]
    assert all(counts["failed"] == 0 for counts in second.values())
    # Check mode works on a node already set up (what the runbook's --check --diff relies on).
    assert {host: counts["changed"] for host, counts in dry.items()} == {"master": 0, "gpu1": 0}, sandbox["runs"][2][-3000:]


@pytest.mark.parametrize("role", ["dlcore_processor", "dlcore_scripts"])
def test_every_role_variable_is_documented(role):
    import yaml

    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text())
    readme = (ANSIBLE_DIR / "roles" / role / "README.md").read_text()
    undocumented = [name for name in defaults if f"`{name}`" not in readme]
    assert not undocumented, f"{role}/README.md does not document {undocumented}"


def test_environment_imports_dlcore_omero_and_torch(sandbox):
    python = sandbox["venv"] / "bin" / "python"
    probe = (
        "import json, dlcore, omero, omero.processor, Ice, torch, importlib.metadata as m;"
        "print(json.dumps({'dlcore': dlcore.__file__, 'ice': m.version('zeroc-ice'),"
        " 'omero': m.version('omero-py'), 'torch': torch.__version__}))"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["dlcore"].startswith(str(sandbox["venv"]))  # installed, not this checkout
    assert (found["ice"], found["omero"]) == ("3.6.5", "5.23.0")
    assert found["torch"].startswith("2.13.0")
    assert (sandbox["venv"] / "bin" / "omero").exists()


def test_run_processor_serves_dlcore_processor(sandbox, tmp_path):
    """The .pth hook: a program named runProcessor.py gets dlcore's ProcessorI, others don't."""
    python = sandbox["venv"] / "bin" / "python"
    body = "from omero.processor import ProcessorI\nprint(ProcessorI.__module__)\n"
    outputs = {}
    for name in ("runProcessor.py", "some_script.py"):
        (tmp_path / name).write_text(body)
        done = subprocess.run([str(python), str(tmp_path / name)], capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                                   "DLCORE_CONFIG": str(sandbox["prefix"] / "etc" / "dlcore" / "dlcore.toml")})
        assert done.returncode == 0, done.stderr
        outputs[name] = done.stdout.strip()
    assert outputs == {"runProcessor.py": "dlcore.processor.server", "some_script.py": "omero.processor"}


def test_models_cloned_at_pinned_commit(sandbox):
    models = sandbox["prefix"] / "opt" / "dlcore" / "models"
    assert _git("rev-parse", "HEAD", cwd=models).strip() == sandbox["models_pinned"]
    assert (models / "nuclei_unet_fake" / "rdf.yaml").is_file()
    assert not (models / "nuclei_unet_fake" / "later.txt").exists()


def test_dlcore_toml_rendered_and_valid(sandbox):
    from dlcore.config import parse_config

    path = sandbox["prefix"] / "etc" / "dlcore" / "dlcore.toml"
    config = parse_config(path.read_text(), path=path)
    assert config.models_dir == sandbox["prefix"] / "opt" / "dlcore" / "models"
    assert config.processor.gpu_nodes == ("gpu1",)
    assert config.processor.gpu_slots_per_gpu == 2
    assert config.processor.dl_script_folders == ("Deep_Learning",)
    assert config.processor.queue_length == 4
    assert config.trained_models_dir == sandbox["trained"] and config.trained_dir == sandbox["trained"]
    assert (sandbox["trained"] / ".dlcore-nodes" / "gpu1").read_text() == "gpu1\n"  # the shared-folder check ran
    assert tomllib.loads(path.read_text())["dlcore"]["device"] == "auto"


def test_systemd_unit_and_node_config_rendered(sandbox):
    unit = (sandbox["prefix"] / "etc" / "systemd" / "system" / "omero-node-gpu1.service").read_text()
    venv, server = sandbox["venv"], sandbox["node_server"]
    assert f"ExecStart={venv}/bin/omero node gpu1 start --foreground" in unit
    assert f"ExecStop={venv}/bin/omero node gpu1 stop" in unit
    assert f"Environment=OMERODIR={server}" in unit
    assert f"Environment=PATH={venv}/bin:" in unit
    assert "User=root" in unit and "WantedBy=multi-user.target" in unit
    assert (server / "var" / "gpu1").is_dir() and (server / "var" / "log").is_dir()
    node_cfg = (server / "etc" / "gpu1.cfg").read_text()
    assert "IceGrid.Node.Name=gpu1" in node_cfg
    assert "IceGrid.Node.Endpoints=tcp -h 192.0.2.11" in node_cfg
    node_config = json.loads((server / "etc" / "fake-config.json").read_text())
    assert node_config == {"omero.master.host": "master", "omero.scripts.timeout": "86400000"}


def test_nodedescriptors_set_once_on_master(sandbox):
    master = sandbox["master_server"]
    config = json.loads((master / "etc" / "fake-config.json").read_text())
    assert config == {
        "omero.server.nodedescriptors": "master:Blitz-0,Indexer-0,PixelData-0,Tables-0 gpu1:Processor-0"
    }
    calls = (master / "omero-calls.log").read_text().splitlines()
    sets = [c for c in calls if c.startswith("config set")]
    assert len(sets) == 1  # later runs read the value and left it alone
    assert sum(c.startswith("config get omero.server.nodedescriptors") for c in calls) == 3  # 3 runs


def test_scripts_installed_and_retired_ones_removed(sandbox):
    menu = sandbox["master_server"] / "lib" / "scripts" / "Deep_Learning"
    present = sorted(p.name for p in menu.glob("*.py"))
    assert present == sorted(sandbox["shipped"] + ["Site_Local.py"])
    assert not (menu / "Retired_Model.py").exists()
    for name in sandbox["shipped"]:
        if name != "Sandbox_Segment.py":
            assert (menu / name).read_bytes() == (REPO / "omero_scripts" / "Deep_Learning" / name).read_bytes()


def _refused_run(tmp_path, gpu_hosts: dict, extra: dict) -> str:
    """Play site.yml against GPU hosts that fail a check made before anything is installed; its output."""
    inventory = {"all": {"vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                                  "ansible_become": False, "dlcore_prefix": str(tmp_path / "root")},
                         "children": {"dlcore_gpu_nodes": {"hosts": gpu_hosts}}}}
    (tmp_path / "inventory.json").write_text(json.dumps(inventory))
    (tmp_path / "extra.json").write_text(json.dumps({"dlcore_user": "root", "dlcore_create_user": False,
                                                     "dlcore_install_os_packages": False, **extra}))
    done = subprocess.run(
        [_tool("ansible-playbook"), "-i", str(tmp_path / "inventory.json"), "-e", f"@{tmp_path / 'extra.json'}",
         str(ANSIBLE_DIR / "site.yml")], cwd=ANSIBLE_DIR, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert not (tmp_path / "root" / "opt" / "dlcore" / "venv").exists()  # refused before installing anything
    return done.stdout


def test_several_gpu_nodes_without_a_shared_trained_models_folder_are_refused(tmp_path):
    hosts = {"gpu1": {"dlcore_omero_node_name": "gpu1"}, "gpu2": {"dlcore_omero_node_name": "gpu2"}}
    output = _refused_run(tmp_path, hosts, {})
    assert "dlcore_trained_models_dir is empty" in output and "gpu1, gpu2" in output


def test_a_trained_models_folder_that_is_not_shared_is_refused(tmp_path):
    """Each node has its own folder at the path (no shared filesystem): each misses the other's marker."""
    hosts = {name: {"dlcore_omero_node_name": name, "dlcore_trained_models_dir": str(tmp_path / name / "trained")}
             for name in ("gpu1", "gpu2")}
    output = _refused_run(tmp_path, hosts, {})
    assert "is not one folder shared by every GPU node" in output
    assert "does not hold the markers of\ngpu2" in output or "markers of gpu2" in output.replace("\n", " ")
