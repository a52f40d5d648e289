"""The Ansible roles in deploy/ansible: lint, syntax, and a real run into a sandbox, twice.

The sandbox run plays ``site.yml`` as root against two inventory hosts that both use the local
connection: ``master`` and ``gpu1`` (the GPU node).  Each has a minimal OMERO.server laid out as
ome.omero_server leaves it: ``/opt/omero/server/OMERO.server`` beside ``/opt/omero/server/config``
holding the role's ``00-omero-server.omero`` (which starts with ``config drop default``), the
master's official systemd unit that loads ``config/*.omero`` before each start, OMERO's
``etc/templates/ice.config``, and ome.ice's ``/opt/ice`` link to ``Ice-3.6.5``.  Their ``bin/omero``
is ``tests/fake_omero_cli.py`` (config get/set/drop, load, admin rewrite, as omero-py does them).
Every path lives under a temporary prefix; no service is started and no OS package installed.
The processor's virtual environment is real: zeroc-ice from the cached wheel, omero-py, torch
(``torch==2.13.0+cpu``, the local CPU wheel), dlcore from this checkout, and the models cloned
from a local git repository at a pinned commit; the master's scripts come from a git repository
of dlcore at a pinned commit.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_DIR = REPO / "deploy" / "ansible"
BIN = Path(sys.executable).parent
WHEEL_CACHE = Path(os.environ.get("DLCORE_WHEEL_CACHE", Path.home() / ".cache" / "dlcore" / "wheels"))
FAKE_OMERO = Path(__file__).with_name("fake_omero_cli.py")
REQUIREMENT_STATE = ANSIBLE_DIR / "roles" / "dlcore_processor" / "files" / "requirement_state.py"
OMERO_DESCRIPTOR = "master:Blitz-0,Indexer-0,DropBox,MonitorServer,FileServer,Storm,PixelData-0,Tables-0,TestDropBox"

# What ome.omero_server renders into config/00-omero-server.omero (omero_server_always_reset_config
# is true by default), and OMERO.server's etc/templates/ice.config (its settings lines).
OFFICIAL_SETTINGS = textwrap.dedent("""\
    config drop default
    config set -- omero.db.host db.example.org
    # Additional custom options
    config set -- omero.client.ui.tree.type_order classic
    """)
OMERO_ICE_TEMPLATE = "omero.host=localhost\nomero.port=@omero.ports.prefix@@omero.ports.ssl@\nomero.rootpass=omero\n"


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
    """OMERO.server at ``root`` as ome.omero_server installs it, with ``root/../config``."""
    for sub in ("etc/grid", "etc/templates", "lib/scripts/omero/util_scripts", "bin", "var/log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "etc" / "templates" / "ice.config").write_text(OMERO_ICE_TEMPLATE)
    cli = root / "bin" / "omero"
    cli.write_text(FAKE_OMERO.read_text().replace("/usr/bin/env python3", sys.executable, 1))
    cli.chmod(0o755)
    (root.parent / "config").mkdir(exist_ok=True)
    (root.parent / "config" / "00-omero-server.omero").write_text(OFFICIAL_SETTINGS)
    return root


def _grid(tmp: Path, prefix: Path, *, ice: bool = True) -> dict[str, Path]:
    """The hosts' OMERO layout: node and master servers, the master's official unit, ome.ice's Ice."""
    node_server = _fake_omero_server(prefix / "opt" / "omero" / "server" / "OMERO.server")
    master_server = _fake_omero_server(tmp / "master" / "OMERO.server")
    units = prefix / "etc" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    cli = master_server / "bin" / "omero"
    (units / "omero-server.service").write_text(textwrap.dedent(f"""\
        # as ome.omero_server's systemd-system-omero-server-service.j2 renders it
        [Service]
        Type=forking
        ExecStartPre={cli} load --glob {master_server.parent}/config/*.omero
        ExecStart={cli} admin start
        ExecStop={cli} admin stop
        """))
    if ice:
        bin_dir = prefix / "opt" / "Ice-3.6.5" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "icegridnode").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "icegridnode").chmod(0o755)
        (prefix / "opt" / "ice").symlink_to("Ice-3.6.5")
    return {"node_server": node_server, "master_server": master_server, "units": units}


def _unit_commands(unit: Path, key: str) -> list[list[str]]:
    """The command lines of ``key`` (ExecStartPre, ExecStart) in a systemd unit, in order."""
    lines = [line.split("=", 1)[1] for line in unit.read_text().splitlines() if line.startswith(key + "=")]
    assert lines, f"{unit} has no {key} line"
    return [shlex.split(line) for line in lines]


def _run_like_systemd(command: list[str], omerodir: Path) -> None:
    """Run a unit's command as systemd would (a shell expands nothing; the unit's OMERODIR)."""
    done = subprocess.run(command, env=dict(os.environ, OMERODIR=str(omerodir)), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _omero_config(server: Path) -> dict[str, str]:
    return json.loads((server / "etc" / "fake-config.json").read_text())


def _site_wheel(folder: Path) -> Path:
    """A minimal wheel standing in for a site script's dependency."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "sitedep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("sitedep.py", "VERSION = '1.0'\n")
        archive.writestr("sitedep-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: sitedep\nVersion: 1.0\n")
        archive.writestr("sitedep-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                        "Tag: py3-none-any\n")
        archive.writestr("sitedep-1.0.dist-info/RECORD", "")
    return wheel


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
    return root, _pinned_then_later(root, model / "later.txt", "a commit after the pinned one\n")


def _pinned_then_later(root: Path, later: Path, text: str) -> str:
    """Commit ``root``'s files (the pinned commit, returned), then a later commit adding ``later``."""
    _git("init", "-q", "-b", "main", cwd=root)
    _git("add", ".", cwd=root)
    _git("commit", "-q", "-m", "pinned", cwd=root)
    pinned = _git("rev-parse", "HEAD", cwd=root).strip()
    later.write_text(text)
    _git("add", ".", cwd=root)
    _git("commit", "-q", "-m", "later", cwd=root)
    return pinned


def _dlcore_source_repo(root: Path, scripts: list[Path]) -> tuple[Path, str]:
    """A git repository of dlcore's scripts: the pinned commit, then a later one adding a script."""
    folder = root / "omero_scripts" / "Deep_Learning"
    folder.mkdir(parents=True)
    for script in scripts:
        shutil.copy(script, folder / script.name)
    (folder / "Sandbox_Segment.py").write_text("# stands in for a shipped script\n")
    return root, _pinned_then_later(root, folder / "Later_Script.py", "# a script of a later dlcore version\n")


def _sandbox_vars(tmp: Path, prefix: Path, grid: dict[str, Path]) -> tuple[dict, dict]:
    """Inventory and extra variables of a sandbox run (the hosts, and what stands in for real hosts)."""
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
                    "omero_server_dir": str(grid["master_server"]),
                    "dlcore_scripts_owner": "root",
                    "dlcore_scripts_keep": ["Site_Local.py"],
                    "dlcore_scripts_checkout": str(tmp / "scripts-checkout"),
                    "dlcore_source": str(REPO),
                }}},
                "dlcore_gpu_nodes": {"hosts": {"gpu1": {"dlcore_omero_node_name": "gpu1", "dlcore_source": str(REPO)}}},
            },
        }
    }
    extra = {
        "dlcore_user": "root",
        "dlcore_create_user": False,
        "dlcore_manage_services": False,
        "dlcore_install_os_packages": False,
        "dlcore_python": sys.executable,
        "dlcore_extras": ["omero"],
        "dlcore_torch_spec": "torch==2.13.0",
        "dlcore_cuda_tag": "cpu",
        "dlcore_torch_index_url": "",
        "dlcore_models_repo": "",
        "dlcore_omero_node_cli": str(grid["node_server"] / "bin" / "omero"),
        "dlcore_omero_master_cli": str(grid["master_server"] / "bin" / "omero"),
        "dlcore_omero_node_endpoints": "tcp -h 192.0.2.11",
    }
    return inventory, extra


def _play(tmp: Path, inventory: dict, extra: dict, *mode: str) -> subprocess.CompletedProcess:
    (tmp / "inventory.json").write_text(json.dumps(inventory))
    (tmp / "extra.json").write_text(json.dumps(extra))
    return subprocess.run(
        [_tool("ansible-playbook"), "-i", str(tmp / "inventory.json"), "-e", f"@{tmp / 'extra.json'}",
         *mode, str(ANSIBLE_DIR / "site.yml")],
        cwd=ANSIBLE_DIR, env=_env(), capture_output=True, text=True, timeout=1200,
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """Run site.yml into a sandbox: twice, then in check mode; yield the paths and the outputs."""
    tmp = tmp_path_factory.mktemp("deploy")
    prefix = tmp / "root"
    grid = _grid(tmp, prefix)
    stale = grid["master_server"] / "lib" / "scripts" / "Deep_Learning"
    stale.mkdir(parents=True)
    (stale / "Retired_Model.py").write_text("# a script an earlier dlcore shipped\n")
    (stale / "Site_Local.py").write_text("# the site's own script, kept by dlcore_scripts_keep\n")

    shipped = sorted((REPO / "omero_scripts" / "Deep_Learning").glob("*.py"))
    source_repo, source_pinned = _dlcore_source_repo(tmp / "dlcore-source", shipped)
    models_repo, pinned = _models_repo(tmp / "models-repo")
    site_wheel = _site_wheel(tmp / "site-wheels")
    (tmp / "shared" / "trained-models").mkdir(parents=True)  # the mounted shared filesystem
    (tmp / "shared" / "exports").mkdir()  # the facility's share for exported datasets

    inventory, extra = _sandbox_vars(tmp, prefix, grid)
    inventory["all"]["children"]["omero_master"]["hosts"]["master"]["dlcore_source"] = (
        f"git+file://{source_repo}@{source_pinned}")
    extra.update({
        "dlcore_ice_wheel": str(_ice_wheel()),
        "dlcore_models_repo": str(models_repo),
        "dlcore_models_version": pinned,
        "dlcore_omero_node_config": {"omero.ports.prefix": ""},
        "dlcore_omero_master_config": {"omero.scripts.timeout": 86400000},
        "dlcore_site_script_requirements": [f"sitedep @ file://{site_wheel}"],
        "dlcore_gpu_slots_per_gpu": 2,
        "dlcore_trained_models_dir": str(tmp / "shared" / "trained-models"),
        "dlcore_export_dir": str(tmp / "shared" / "exports"),
    })
    runs = []
    for mode in ([], [], ["--check", "--diff"]):  # install, again (idempotence), dry run
        done = _play(tmp, inventory, extra, *mode)
        assert done.returncode == 0, f"ansible-playbook failed:\n{done.stdout[-8000:]}\n{done.stderr[-3000:]}"
        runs.append(done.stdout)
    yield {
        "prefix": prefix, "node_server": grid["node_server"], "master_server": grid["master_server"],
        "units": grid["units"], "venv": prefix / "opt" / "dlcore" / "venv", "models_pinned": pinned,
        "shipped": [s.name for s in shipped] + ["Sandbox_Segment.py"], "runs": runs,
        "trained": tmp / "shared" / "trained-models",
    }


def _recap(output: str) -> dict[str, dict[str, int]]:
    recap = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", output, re.MULTILINE):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return recap


def _changed_tasks(output: str) -> list[str]:
    """The tasks of a playbook run that reported a change (for assertion messages)."""
    changed, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.split("]")[0] + "]"
        elif line.startswith("changed:") and task:
            changed.append(f"{task} {line[:160]}")
    return changed


def test_first_run_changes_and_second_run_changes_nothing(sandbox):
    first, second, dry = (_recap(run) for run in sandbox["runs"])
    assert set(first) == {"master", "gpu1"}
    assert first["gpu1"]["changed"] > 5 and first["master"]["changed"] >= 2
    assert {host: counts["changed"] for host, counts in second.items()} == {"master": 0, "gpu1": 0}, \
        _changed_tasks(sandbox["runs"][1])
    assert all(counts["failed"] == 0 for counts in second.values())
    # Check mode works on a node already set up (what the runbook's --check --diff relies on).
    assert {host: counts["changed"] for host, counts in dry.items()} == {"master": 0, "gpu1": 0}, \
        _changed_tasks(sandbox["runs"][2])


@pytest.mark.parametrize("role", ["dlcore_processor", "dlcore_scripts"])
def test_every_role_variable_is_documented(role):
    import yaml

    defaults = yaml.safe_load((ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml").read_text())
    readme = (ANSIBLE_DIR / "roles" / role / "README.md").read_text()
    undocumented = [name for name in defaults if f"`{name}`" not in readme]
    assert not undocumented, f"{role}/README.md does not document {undocumented}"


def _venv_run(sandbox, *args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    done = subprocess.run([str(sandbox["venv"] / "bin" / "python"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_environment_imports_dlcore_omero_torch_and_the_sites_script_requirements(sandbox):
    probe = (
        "import json, dlcore, omero, omero.processor, Ice, torch, sitedep, importlib.metadata as m;"
        "print(json.dumps({'dlcore': dlcore.__file__, 'ice': m.version('zeroc-ice'),"
        " 'omero': m.version('omero-py'), 'torch': torch.__version__, 'sitedep': sitedep.VERSION}))"
    )
    found = json.loads(_venv_run(sandbox, "-c", probe))
    assert found["dlcore"].startswith(str(sandbox["venv"]))  # installed, not this checkout
    assert (found["ice"], found["omero"], found["sitedep"]) == ("3.6.5", "5.23.0", "1.0")
    assert found["torch"] == "2.13.0+cpu"  # the build dlcore_cuda_tag names
    assert (sandbox["venv"] / "bin" / "omero").exists()


def test_torch_of_another_cuda_build_counts_as_not_installed(sandbox):
    """PEP 440: torch==2.13.0 accepts 2.13.0+cpu; the role compares the build label and pins it for pip."""
    def state(*args):
        return json.loads(_venv_run(sandbox, str(REQUIREMENT_STATE), *args))

    assert state("torch==2.13.0", "cu128") == {"state": "other-build", "found": "2.13.0+cpu",
                                               "install": "torch==2.13.0+cu128"}
    assert state("torch==2.13.0", "cpu")["state"] == "satisfied"
    assert state("torch==2.12.0", "cpu") == {"state": "missing", "found": "2.13.0+cpu", "install": "torch==2.12.0+cpu"}
    assert state("omero-py==5.23.0", "") == {"state": "satisfied", "found": "5.23.0", "install": "omero-py==5.23.0"}
    done = subprocess.run([str(sandbox["venv"] / "bin" / "python"), str(REQUIREMENT_STATE), "torch>=2", "cu128"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "needs one exact pin" in done.stderr


def test_run_processor_serves_dlcore_processor(sandbox, tmp_path):
    """The .pth hook: runProcessor (as a file, and as OMERO 5.6 starts it, ``python -m runProcessor``) gets
    dlcore's ProcessorI; other programs don't."""
    body = "from omero.processor import ProcessorI\nprint(ProcessorI.__module__)\n"
    env = {"DLCORE_CONFIG": str(sandbox["prefix"] / "etc" / "dlcore" / "dlcore.toml")}
    for name in ("runProcessor.py", "some_script.py"):
        (tmp_path / name).write_text(body)
    outputs = {
        "file": _venv_run(sandbox, str(tmp_path / "runProcessor.py"), env=env),
        "-m": _venv_run(sandbox, "-m", "runProcessor", cwd=tmp_path, env=env),
        "other": _venv_run(sandbox, str(tmp_path / "some_script.py"), env=env),
        "other -m": _venv_run(sandbox, "-m", "some_script", cwd=tmp_path, env=env),
    }
    assert outputs == {"file": "dlcore.processor.server", "-m": "dlcore.processor.server",
                       "other": "omero.processor", "other -m": "omero.processor"}


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
    assert config.export_dir == sandbox["trained"].parent / "exports"  # Export_Annotated_Dataset's folder
    assert (sandbox["trained"] / ".dlcore-nodes" / "gpu1").read_text() == "gpu1\n"  # the shared-folder check ran
    assert tomllib.loads(path.read_text())["dlcore"]["device"] == "auto"
    work_dir = sandbox["prefix"] / "var" / "lib" / "dlcore" / "scratch"  # checkpoints survive a node restart
    assert config.work_dir == work_dir and config.checkpoint_every_s == 20.0
    assert work_dir.is_dir() and work_dir.stat().st_mode & 0o777 == 0o700


def test_systemd_unit_and_node_config_rendered(sandbox):
    unit_path = sandbox["units"] / "omero-node-gpu1.service"
    unit = unit_path.read_text()
    venv, server, prefix = sandbox["venv"], sandbox["node_server"], sandbox["prefix"]
    assert f"ExecStart={venv}/bin/omero node gpu1 start --foreground" in unit
    assert "ExecStop=" not in unit  # "omero node gpu1 stop" needs a pid file --foreground never writes
    assert f"Environment=OMERODIR={server}" in unit
    assert f"Environment=PATH={venv}/bin:{prefix}/opt/ice/bin:" in unit  # ome.ice's /opt/ice link
    assert "User=root" in unit and "WantedBy=multi-user.target" in unit
    assert (server / "var" / "gpu1").is_dir() and (server / "var" / "log").is_dir()
    node_cfg = (server / "etc" / "gpu1.cfg").read_text()
    assert "IceGrid.Node.Name=gpu1" in node_cfg
    assert "IceGrid.Node.Endpoints=tcp -h 192.0.2.11" in node_cfg


def test_node_settings_survive_the_official_roles_reset_and_a_node_start(sandbox):
    """ome.omero_server on the node reloads config/*.omero (its 00 file drops everything first); the
    node's unit loads dlcore's file before each start; "omero node start" re-renders etc/ice.config."""
    server = sandbox["node_server"]
    (server / "etc" / "fake-config.json").unlink(missing_ok=True)
    _run_like_systemd([str(server / "bin" / "omero"), "load", "--glob", f"{server.parent}/config/*.omero"], server)
    expected = {"omero.db.host": "db.example.org", "omero.client.ui.tree.type_order": "classic",
                "omero.master.host": "master", "omero.ports.prefix": ""}
    assert _omero_config(server) == expected  # dlcore's 90 file is loaded after the role's 00 reset
    (server / "etc" / "fake-config.json").write_text("{}")  # a reset that did not reload
    # a node started before, for an older master address: admin rewrite would refuse while internal.cfg is there
    (server / "etc" / "internal.cfg").write_text("Ice.Default.Locator=IceGrid/Locator:tcp -h old-master -p 4061\n")
    unit = sandbox["units"] / "omero-node-gpu1.service"
    for command in _unit_commands(unit, "ExecStartPre"):
        _run_like_systemd(command, server)
    assert _omero_config(server) == {"omero.master.host": "master", "omero.ports.prefix": ""}
    _run_like_systemd([str(server / "bin" / "omero"), "admin", "rewrite"], server)  # what node start does first
    assert "tcp -h master -p 4061" in (server / "etc" / "internal.cfg").read_text()  # this start's settings
    ice_config = (server / "etc" / "ice.config").read_text()
    assert "Ice.Default.Router=OMERO.Glacier2/router:tcp -p 4063 -h master" in ice_config
    settings = [line for line in ice_config.splitlines() if line and not line.startswith("#")]
    assert settings == ["Ice.Default.Router=OMERO.Glacier2/router:tcp -p 4063 -h master", "omero.host=master"]


def test_master_settings_survive_the_official_units_reset(sandbox):
    """The master's settings are a config/*.omero file, loaded by the official unit after its reset."""
    master = sandbox["master_server"]
    calls = (master / "omero-calls.log").read_text().splitlines()
    assert not [c for c in calls if c.startswith("config set")]  # never "omero config set" on the master
    assert sum(c == "config get omero.launcher.python" for c in calls) == 3  # checked on each of the 3 runs
    for command in _unit_commands(sandbox["units"] / "omero-server.service", "ExecStartPre"):
        _run_like_systemd(command, master)
    config = _omero_config(master)
    assert config == {
        "omero.db.host": "db.example.org", "omero.client.ui.tree.type_order": "classic",
        "omero.server.nodedescriptors": OMERO_DESCRIPTOR + " gpu1:Processor-0",
        "omero.master.host": "master", "omero.scripts.timeout": "86400000",
    }
    services = config["omero.server.nodedescriptors"].split()[0].split(":")[1].split(",")
    assert {"Storm", "DropBox", "MonitorServer", "FileServer"} <= set(services)  # IceStorm: how jobs find processors
    assert not [s for s in services if s.startswith("Processor")]


def test_scripts_installed_from_the_pinned_source_and_retired_ones_removed(sandbox):
    menu = sandbox["master_server"] / "lib" / "scripts" / "Deep_Learning"
    present = sorted(p.name for p in menu.glob("*.py"))
    assert present == sorted(sandbox["shipped"] + ["Site_Local.py"])  # not the later commit's Later_Script.py
    assert not (menu / "Retired_Model.py").exists()
    for name in sandbox["shipped"]:
        if name != "Sandbox_Segment.py":
            assert (menu / name).read_bytes() == (REPO / "omero_scripts" / "Deep_Learning" / name).read_bytes()


def _refused_run(tmp_path, gpu_hosts: dict, extra: dict, *, ice: bool = True, master_settings: str = "") -> str:
    """Play site.yml against hosts that fail a check made before anything is installed; its output."""
    prefix = tmp_path / "root"
    grid = _grid(tmp_path, prefix, ice=ice)
    if master_settings:
        (grid["master_server"] / "etc" / "fake-config.json").write_text(master_settings)
    inventory, base = _sandbox_vars(tmp_path, prefix, grid)
    inventory["all"]["children"]["dlcore_gpu_nodes"]["hosts"] = gpu_hosts
    done = _play(tmp_path, inventory, {**base, **extra})
    assert done.returncode != 0
    assert not (prefix / "opt" / "dlcore" / "venv").exists()  # refused before installing anything
    assert not (grid["master_server"].parent / "config" / "90-dlcore.omero").exists()
    return done.stdout


def _flat(output: str) -> str:
    return " ".join(output.split())


def test_several_gpu_nodes_without_a_shared_trained_models_folder_are_refused(tmp_path):
    hosts = {"gpu1": {"dlcore_omero_node_name": "gpu1"}, "gpu2": {"dlcore_omero_node_name": "gpu2"}}
    output = _refused_run(tmp_path, hosts, {})
    assert "dlcore_trained_models_dir is empty" in output and "gpu1, gpu2" in output


def test_a_trained_models_folder_that_is_not_shared_is_refused(tmp_path):
    """Each node has its own folder at the path (no shared filesystem): each misses the other's marker."""
    hosts = {name: {"dlcore_omero_node_name": name, "dlcore_trained_models_dir": str(tmp_path / name / "trained")}
             for name in ("gpu1", "gpu2")}
    for name in hosts:
        (tmp_path / name / "trained").mkdir(parents=True)
    output = _flat(_refused_run(tmp_path, hosts, {}))
    assert "is not one folder shared by every GPU node" in output
    assert "does not hold the markers of gpu2" in output


ONE_NODE = {"gpu1": {"dlcore_omero_node_name": "gpu1"}}


def test_a_trained_models_folder_that_is_not_mounted_is_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {"dlcore_trained_models_dir": str(tmp_path / "nfs")}))
    assert "nfs does not exist on gpu1: mount the shared filesystem there" in output


def test_an_export_folder_that_does_not_exist_is_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {"dlcore_export_dir": str(tmp_path / "exports")}))
    assert "exports does not exist on gpu1: create or mount it there" in output


def test_a_field_python_that_cannot_run_the_worker_is_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {"dlcore_field_python": "/usr/bin/python3"}))
    assert "cannot start dlcore's field-models worker" in output and "tools/install_field_env.sh" in output


def test_a_master_descriptor_without_icestorm_is_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {
        "dlcore_omero_master_descriptor": "master:Blitz-0,Indexer-0,PixelData-0,Tables-0"}))
    assert "It must keep Storm (IceStorm)" in output and "No processor available" in output


def test_master_only_settings_on_a_node_are_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {"dlcore_omero_node_config": {"omero.scripts.timeout": 1}}))
    assert "dlcore_omero_node_config sets omero.scripts.timeout" in output and "dlcore_omero_master_config" in output


def test_a_node_without_the_ice_binaries_is_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {}, ice=False))
    assert "bin/icegridnode is missing" in output and "ome.ice" in output


@pytest.mark.parametrize("driver, expected", [
    ("CUDA Version: 12.2", "needs an NVIDIA driver for CUDA 12.8 or newer, but the driver supports CUDA 12.2"),
    (None, "needs an NVIDIA driver for CUDA 12.8 or newer, but"),
])
def test_a_driver_too_old_for_the_cuda_build_is_refused(tmp_path, driver, expected):
    smi = tmp_path / "nvidia-smi"
    if driver is not None:
        smi.write_text(f"#!/bin/sh\necho '| NVIDIA-SMI 535.183.01  Driver Version: 535.183.01  {driver} |'\n")
        smi.chmod(0o755)
    output = _flat(_refused_run(tmp_path, ONE_NODE, {"dlcore_cuda_tag": "cu128", "dlcore_nvidia_smi": str(smi)}))
    assert expected in output


def test_a_master_launcher_outside_dlcores_environment_is_refused(tmp_path):
    output = _flat(_refused_run(tmp_path, ONE_NODE, {},
                                master_settings=json.dumps({"omero.launcher.python": "/usr/bin/python3"})))
    assert 'omero.launcher.python is "/usr/bin/python3" on the master' in output


def test_a_master_unit_that_does_not_load_the_settings_is_refused(tmp_path):
    plain = tmp_path / "plain.service"
    plain.write_text("[Service]\nExecStart=/opt/omero/server/OMERO.server/bin/omero admin start\n")
    output = _flat(_refused_run(tmp_path, ONE_NODE, {"dlcore_omero_master_unit_file": str(plain)}))
    assert 'plain.service does not run "omero load --glob' in output
