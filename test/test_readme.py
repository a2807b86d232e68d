"""The README's commands hold: every line of its ```bash blocks runs as written, with tiny sizes
(episodes, steps, duration, batch and image sizes), and every `fastdp ...` it quotes inline
parses. A new user's first hour depends on these."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fastdp_ros.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: size knobs and their tiny values
TINY = {"--episodes": "1", "--steps": "2", "--duration": "2", "--batch-size": "4", "--calls": "3", "--warmup": "1",
        "--reward-steps": "2"}
TINY_PER_COMMAND = {("collect", "--episodes"): "3"}  # ALT's OOD calibration holds an episode out
#: options added where the README leaves a size at its default
TINY_EXTRA = {
    "collect": {"--image-size": "32"},
    "train": {"--batch-size": "4"},
    "distill": {"--batch-size": "4"},
    "bench": {"--calls": "3", "--warmup": "1", "--in-process": None},  # None: a flag
}
#: the same for one policy of a command (its options are its own: `fastdp train --policy dp --help`)
TINY_EXTRA_PER_POLICY = {("train", "dp"): {"--down-dims": "16,32"}}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def command_lines(block: str) -> list[str]:
    """The command lines of a bash block (continuation lines joined, comment lines left out)."""
    text = block.replace("\\\n", " ")
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def needs_own_recordings(lines: list[str]) -> bool:
    """A block that starts from the reader's own recordings (`fastdp import` of their bags or
    datasets): its inputs do not exist here. Its commands are parsed; the importers run end to end
    in test_import_*."""
    fastdp = [line for line in lines if line.startswith("fastdp ")]
    return bool(fastdp) and fastdp[0].startswith("fastdp import ")


def split_env(tokens: list[str]) -> tuple[dict, list[str]]:
    env = {}
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        key, _, value = tokens.pop(0).partition("=")
        env[key] = value
    return env, tokens


def tiny(argv: list[str]) -> list[str]:
    """The same command with tiny sizes: knob values replaced, missing ones added."""
    command, out = argv[0], list(argv)
    for i, token in enumerate(out[:-1]):
        if token in TINY:
            out[i + 1] = TINY_PER_COMMAND.get((command, token), TINY[token])
    policy = out[out.index("--policy") + 1] if "--policy" in out[:-1] else None
    extra = {**TINY_EXTRA.get(command, {}), **TINY_EXTRA_PER_POLICY.get((command, policy), {})}
    for flag, value in extra.items():
        if flag not in out:
            out += [flag] if value is None else [flag, value]
    return out


def test_tiny_replaces_the_size_knobs():
    assert tiny(["collect", "--task", "push", "--episodes", "200", "--out", "d"]) == [
        "collect", "--task", "push", "--episodes", "3", "--out", "d", "--image-size", "32"]
    assert tiny(["eval", "m", "--episodes", "50"]) == ["eval", "m", "--episodes", "1"]
    assert tiny(["run", "m", "--duration", "10"]) == ["run", "m", "--duration", "2"]


def test_inline_fastdp_commands_parse():
    """`fastdp ...` quoted in the text and the tables: the flags exist (placeholders stay). The
    parser is built per command: a policy's options exist where the command names it."""
    quoted = re.findall(r"`(fastdp [^`]+)`", README.read_text())
    assert len(quoted) > 10
    for text in quoted:
        # optional parts [..] left out, alternatives (ddpm|ddim) as their first, repetitions (M...) once
        text = re.sub(r"\[[^\]]*\]", "", text.replace("\\|", "|")).replace("...", "")
        argv = [t.split("|")[0] for t in shlex.split(text)[1:]]
        argv = ["1" if re.fullmatch(r"[A-Z]\d?", t) else t for t in argv]  # placeholders: M, D2, N, S
        if len(argv) == 1:  # a command named in the text (`fastdp run`): it exists
            argv.append("--help")
        try:
            build_parser(argv).parse_args(argv)
        except SystemExit as e:
            if e.code == 0:
                continue
            pytest.fail(f"README quotes a command fastdp does not accept: {text} (exit {e.code})")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder to run the README's commands in (its relative paths land here)."""
    return tmp_path_factory.mktemp("readme")


def _run_line(line: str, workspace: Path, monkeypatch) -> None:
    tokens = shlex.split(line, comments=True)
    env, argv = split_env(tokens)
    if argv[:1] == ["source"]:
        activate = Path(sys.prefix) / "bin" / "activate"
        assert activate.exists() and (Path(sys.prefix) / "bin" / "fastdp").exists(), "no fastdp in the venv"
        return
    if argv[:1] == ["pip"]:
        return  # test_install_plan resolves these
    if argv[:1] == ["ros2"]:
        pytest.skip("ros2 launch / param / service need a ROS 2 installation (the nodes: test_nodes_*)")
    if argv[:2] == ["bash", "scripts/test.sh"]:
        return  # the suite this test belongs to
    if argv[:2] == ["bash", "scripts/main.sh"]:
        args = argv[2:]
        args = tiny(["run", *args])[1:] if any(a in ("--episodes", "--duration") for a in args) else \
            [*args, "--duration", "2"]
        run_env = {**os.environ, **env, "FASTDP_VENV": sys.prefix, "FASTDP_OUT": str(workspace / "main_out"),
                   "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        done = subprocess.run(["bash", str(ROOT / "scripts" / "main.sh"), *args], env=run_env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{line}: {done.stderr[-2000:]}"
        # fastdp's log lines and Python warnings (pip's own notes while setting up are not the run's)
        warned = [x for x in done.stderr.splitlines() if re.match(r"\d\d:\d\d:\d\d (WARNING|ERROR) ", x)
                  or re.search(r"\w+Warning: |Traceback", x)]
        assert not warned, f"{line} printed warnings on a healthy run: {warned}"
        return
    assert argv[0] == "fastdp", f"the README shows a command this test does not know: {line}"
    monkeypatch.chdir(workspace)
    assert main(tiny(argv[1:])) == 0, line


def test_readme_bash_blocks_run_with_tiny_sizes(workspace, monkeypatch):
    blocks = [command_lines(b) for b in bash_blocks(README.read_text())]
    lines = [line for block in blocks for line in block]
    assert any(line.startswith("bash scripts/main.sh") for line in lines)
    skipped = []
    for block in blocks:
        for line in block:
            if needs_own_recordings(block):
                if line.startswith("fastdp "):
                    argv = shlex.split(line, comments=True)[1:]
                    build_parser(argv).parse_args(argv)  # exits 2 on a wrong flag
                skipped.append(line)
                continue
            try:
                _run_line(line, workspace, monkeypatch)
            except pytest.skip.Exception:
                skipped.append(line)
    assert (workspace / "models" / "my_onedp" / "model.safetensors").exists()
    # only the ROS 2 lines and the own-recordings block are not run here
    assert all(line.startswith("ros2 ") or any(line in b for b in blocks if needs_own_recordings(b))
               for line in skipped)
