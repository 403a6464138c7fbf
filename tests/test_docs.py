"""Every example in README.md and docs/*.md runs, so a document can never promise what the
code does not do:

* a file a document shows (a first line `# name.py` or `# name.toml`) is the repository's
  file where one exists (examples/), else written where the commands below find it;
* a Python snippet runs in a fresh interpreter, beside those files;
* a TOML fragment loads as a study (`ablation list`);
* each `ablation ...` command line runs as a user would paste it, on tiny data and
  limits the way the quick form runs: `ablation run` lines plan with `--dry-run` (the
  flags, the study, the variants, the data, every job; the training itself is what the
  rest of the suite trains), `list`, `studies` and `report` run in full;
* a command synopsis names only flags its command has, and the code map only files
  that exist.

What cannot run here is listed in NOT_HERE with its reason (a GPU, a cluster, an
install, a server); the list is short on purpose.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# command lines that cannot run on this machine, each with its reason (startswith match)
NOT_HERE = {
    "python3 -m venv": "an install into a new virtual environment (CI does exactly this)",
    ". .venv/bin/activate": "the environment that install makes",
    "pip install": "an install (CI installs the project from its own files)",
    "python -m pytest": "the test suite itself",
    "ray start": "a Ray cluster's nodes",
    "mlflow ui": "a web server",
    "ablation bench resnet32_e resnet50 --precision bf16": "a GPU machine's measurement",
    "ablation run wrn28_10 --study wrn2016 --augment-on device --devices-per-job 2":
        "a machine with two GPUs (tests/test_parallel.py trains on two CPU devices)",
    "python benchmarks/gpu.py": "a GPU machine's benchmark (tests/test_gpu_benchmark.py runs "
                                "it on the CPU with a fake nvidia-smi)",
    "ablation run --all --seeds 3 --jobs-per-gpu 4": "a GPU machine's study (every variant, "
                                                     "VGG19's ImageNet weights included)",
    "ablation run --all --seeds 3 --executor ray": "a Ray cluster at `auto`",
    "ablation run --all --seeds 3 --results /shared/me/results --executor slurm":
        "a Slurm cluster's GPU partition (tests/test_slurm.py runs one for real)",
    "ablation run --study my-units.toml --all --seeds 3 --results /shared/me/results":
        "a Slurm cluster's GPU partition (tests/test_slurm.py runs one for real)",
    "ablation bench resnet32_e --precision bf16": "a GPU node (srun)",
    "ablation status --results /shared/me/results": "a cluster's shared results folder",
    "ablation report --study my-units.toml --results /shared/me/results":
        "a cluster's shared results folder",
}
TINY = ["--epochs", "1", "--train-limit", "64", "--test-limit", "32", "--batch-size", "32"]


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc.name}:{self.line}"

    @property
    def file(self) -> str | None:
        """The file a block shows: its first line `# name.py` / `# name.toml`."""
        first = self.text.splitlines()[0] if self.text.strip() else ""
        m = re.fullmatch(r"#\s*([\w./-]+\.(?:py|toml))", first.strip())
        return m.group(1) if m else None


def blocks() -> list[Block]:
    out = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            out.append(Block(doc, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)))
    return out


BLOCKS = blocks()


def commands(block: Block) -> list[str]:
    """The command lines of a bash block: continuations joined, comments dropped, `&&`
    chains split."""
    text = block.text.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out += [part.strip() for part in line.split("&&")]
    return out


def _synopsis(cmd: str) -> bool:
    """A line with placeholders ([--flag X], DIR, NAME|FILE, <...>): a synopsis, not a
    command to run."""
    return bool(re.search(r"\[|<|\b[A-Z]{2,}\b|\|", cmd))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A user's folder: the files the documents show, written as they show them."""
    folder = tmp_path_factory.mktemp("docs")
    for b in BLOCKS:
        if b.file and not (ROOT / b.file).exists():
            (folder / b.file).write_text(b.text, encoding="utf-8")
    shutil.copytree(ROOT / "examples", folder / "examples")
    return folder


def test_shown_files_are_the_repositorys_files():
    shown = [b for b in BLOCKS if b.file and (ROOT / b.file).exists()]
    assert shown, "no document shows a file of examples/ any more?"
    for b in shown:
        body = "\n".join(b.text.splitlines()[1:]).strip()
        assert body in (ROOT / b.file).read_text(encoding="utf-8"), (b.where, b.file)


def test_python_snippets_run_in_a_fresh_interpreter(workdir):
    snippets = [b for b in BLOCKS if b.lang == "python" and not b.file]
    assert snippets
    procs = [(b, subprocess.Popen([sys.executable, "-c", b.text], cwd=workdir,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
             for b in snippets]  # at once: each a fresh process
    for b, p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{b.where}:\n{b.text}\n{err[-2000:]}"


def test_units_files_shown_import_and_register_their_parts(workdir):
    """A units file a document shows imports and registers a unit, stem or head (the
    studies that use them count them: the commands below)."""
    files = [b.file for b in BLOCKS if b.file and b.file.endswith(".py")]
    code = ("import sys\nfrom ablation import models\nfrom ablation.study import import_units\n"
            "for path in sys.argv[1:]:\n"
            "    module, units = import_units(path)\n"
            "    parts = [n for k in ('stem', 'head') for n in models.PARTS[k].mine(module)]\n"
            "    assert units or parts, path\n")
    r = subprocess.run([sys.executable, "-c", code, *[
        str(ROOT / f) if (ROOT / f).exists() else str(workdir / f) for f in files]],
        cwd=workdir, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_toml_fragments_load_as_studies(workdir):
    fragments = [b for b in BLOCKS if b.lang == "toml" and not b.file]
    assert fragments
    for i, b in enumerate(fragments):
        text = b.text
        if "[[variant]]" not in text:  # a table alone: give it a variant to apply to
            text += '\n[[variant]]\nname = "doc_v"\nbase = "resnet32_e"\n'
        path = workdir / f"fragment{i}.toml"
        path.write_text(f'name = "fragment{i}"\n' + text)
        r = run_cli("list", "--study", str(path), cwd=workdir)
        assert r.returncode == 0, f"{b.where}:\n{b.text}\n{r.stderr}"


def _help(sub: str) -> str:
    return run_cli(*([sub] if sub else []), "--help").stdout


def test_synopses_name_only_flags_the_commands_have():
    """Every `--flag` of a synopsis (README's usage, the docs' command lines with
    placeholders) is in its command's --help."""
    helps: dict[str, str] = {}
    checked = 0
    for b in BLOCKS:
        if b.lang not in ("text", "bash"):
            continue
        sub = None
        for line in b.text.splitlines():
            if b.lang == "bash":
                line = re.sub(r"\s+#.*$", "", line)  # a comment is no synopsis
            m = re.match(r"\s*ablation (\w+)", line)
            if m:
                sub = m.group(1)
            elif not line.startswith((" ", "\t")):
                sub = None
            if sub is None or not (_synopsis(line) or b.lang == "text"):
                continue
            if sub not in helps:
                helps[sub] = _help(sub)
            for flag in re.findall(r"(--[a-z][a-z0-9-]*)", line):
                assert flag in helps[sub], (b.where, sub, flag)
                checked += 1
    assert checked > 50


def test_the_code_map_names_files_that_exist():
    text = (ROOT / "README.md").read_text()
    m = re.search(r"## Code map.*?```text\n(.*?)```", text, re.S)
    paths = re.findall(r"^(ablation\S*)", m.group(1), re.M)
    assert len(paths) > 20
    for p in paths:
        assert list(ROOT.glob(p)), p


def _runnable() -> list[tuple[str, str]]:
    out = []
    for b in BLOCKS:
        if b.lang != "bash":
            continue
        for cmd in commands(b):
            if any(cmd.startswith(k) for k in NOT_HERE) or _synopsis(cmd):
                continue
            out.append((b.where, cmd))
    return out


RUNNABLE = _runnable()


def test_every_command_line_is_run_or_listed_with_its_reason():
    """Nothing is left out silently: each command line is run below, is a synopsis, or
    is in NOT_HERE with its reason; and each NOT_HERE entry still names a line."""
    lines = [cmd for b in BLOCKS if b.lang == "bash" for cmd in commands(b)]
    for key in NOT_HERE:
        assert any(cmd.startswith(key) for cmd in lines), f"NOT_HERE {key!r} names no line"
    assert len(RUNNABLE) >= 8


def _pack_first(dataset: str, workdir: Path, cifar_dir: Path) -> None:
    """A `run --dataset DEST` line after a documented `ablation data pack SRC DEST`: the
    pack is made first, whichever of the two lines runs first."""
    for _, cmd in RUNNABLE:
        args = shlex.split(cmd)
        if args[1:3] == ["data", "pack"] and args[4] == dataset and not (
                workdir / dataset).exists():
            more = [] if "--data-dir" in args else ["--data-dir", str(cifar_dir)]
            r = run_cli(*args[1:], *more, cwd=workdir)
            assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("where,cmd", RUNNABLE, ids=[f"{w} {c[:40]}" for w, c in RUNNABLE])
def test_a_documented_command_runs(where, cmd, workdir, tiny_results, cifar_dir, tmp_path):
    """As pasted, in a user's folder: `run` plans (--dry-run, tiny limits), the rest runs
    on the suite's tiny trained runs."""
    args = shlex.split(cmd)
    assert args[0] == "ablation", (where, cmd)
    sub = args[1]
    extra: list[str] = []
    if args[1:3] == ["data", "pack"]:  # made once, for the `run --dataset` lines too
        _pack_first(args[4], workdir, cifar_dir)
        assert (workdir / args[4] / "manifest.json").is_file(), (where, cmd)
        return
    if sub == "run" and "--dataset" in args:
        _pack_first(args[args.index("--dataset") + 1], workdir, cifar_dir)
    if sub == "run":
        extra = ["--dry-run", "--data-dir", str(cifar_dir), "--results", str(tmp_path / "r")]
        if "--epochs" not in args:
            extra += TINY
    elif sub == "evaluate":  # it writes into the run folders: a copy of the tiny runs
        shutil.copytree(tiny_results, tmp_path / "r",
                        ignore=shutil.ignore_patterns("tensorboard", "corruptions"))
        extra = ["--results", str(tmp_path / "r"), "--data-dir", str(cifar_dir)]
    elif sub in ("report", "status", "analyze", "export"):
        extra = ["--results", str(tiny_results)]
        if sub == "report":
            extra += ["--out", str(tmp_path / "report")]
    r = run_cli(*args[1:], *extra, cwd=workdir)
    if sub == "report" and "--study" in args and r.returncode:
        # a user study's report: the tiny runs are the blog's, so it says what to run
        assert "no runs of study" in r.stderr and "Traceback" not in r.stderr, (where, cmd)
        return
    assert r.returncode == 0, f"{where}: {cmd}\n{r.stdout[-1500:]}\n{r.stderr[-1500:]}"


def test_every_command_has_a_help_that_prints(capsys):
    """`--help` of every command and subcommand prints (argparse formats help texts
    with %, so a stray "100 %" in a recipe field's help broke `ablation run --help`).
    The commands are read from each usage line's {choices}."""
    from ablation.cli import build_parser

    def helped(words: tuple[str, ...]) -> str:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([*words, "--help"])
        assert done.value.code == 0, words
        out = capsys.readouterr().out
        assert out.startswith("usage: ablation"), words
        return out

    todo, seen = [()], []
    while todo:
        words = todo.pop()
        seen.append(words)
        usage = helped(words).split("\n\n")[0]
        # a command's subcommands (the usage line wraps between them)
        choices = re.search(r"\{([a-z,\s]+)\}\s+\.\.\.", usage)
        todo += [(*words, c.strip()) for c in choices.group(1).split(",")] if choices else []
    assert ("data", "pack") in seen and ("run",) in seen and len(seen) == 12, seen
