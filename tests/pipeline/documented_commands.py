"""The shell commands README.md and docs/*.md document, read from the Markdown itself and sorted
into classes, so the tests run what a reader copies.

A command is a line of a fenced code block tagged ``bash``, ``sh``, ``shell``, ``console`` (only
its ``$ `` lines) or untagged, with ``\\`` continuations joined and ``#`` comments dropped. Each
falls in exactly one class, by the first rule of :data:`RULES` it matches:

* ``quick``: seconds on a fresh clone without data (``pipeline.info``, ``--help``, a benchmark's
  ``--smoke``); ``tests/pipeline/test_documented_commands.py`` runs them;
* ``needs_outputs``: ``pipeline.evaluate`` / ``pipeline.predict`` on a trained model; they need
  the outputs of ``dvc repro``: :func:`run_needs_outputs` runs them in a repository after it;
* ``not_run``: long or outside the machine (the whole pipeline, full benchmarks, cluster and
  server commands, installs, GPU), each rule with the reason.

A command no rule matches fails the tests: a new documented command is classified on purpose.
Benchmark commands are also found in inline code spans (``python benchmarks/...``), whatever
their class, so the tests can check every documented flag against the script's parser.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
KINDS = ("quick", "needs_outputs", "not_run")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "<", "&"}

# (class, pattern on the command with a leading `.venv/bin/python` spelt `python`, why)
RULES: list[tuple[str, str, str]] = [
    ("quick", r"^python -m pipeline\.info(\s|$)", "parameter counts from the configs: no data, no weights"),
    ("quick", r"^python (-m pipeline\.\w+|benchmarks/\w+\.py)(\s.*)?\s(--help|-h)(\s|$)", "prints the usage"),
    ("quick", r"^python benchmarks/(cache_speedup|cpu_kernels)\.py(\s.*)?\s--smoke(\s|$)", "tiny-random, a few steps"),
    ("needs_outputs", r"^python -m pipeline\.(evaluate|predict)\s.*--model\s+(models/|runs:/|models:/)",
     "needs a trained model: the outputs of dvc repro"),
    ("not_run", r"^make (repro|repro-paper|test|test-fast|venv|lint)$",
     "creates the virtualenv (pip install), then runs for minutes"),
    ("not_run", r"^(time )?dvc (repro|exp run)(\s|$)",
     "the whole pipeline, minutes (tests/pipeline/test_dvc_repro.py runs dvc repro on a copy)"),
    ("not_run", r"^(dvc (remote add|push|pull)|git (add|commit|clone))(\s|$)",
     "sharing through a DVC remote (tests/cluster/test_dvc_remote.py runs these on a copy)"),
    ("not_run", r"^python -m pipeline\.(download|prepare|backbone|cache|train|table|sweep|report)(\s|$)",
     "a pipeline stage on real data or a cluster's shared paths (dvc repro runs the stages)"),
    ("not_run", r"^python benchmarks/(cache_speedup|cost|cpu_kernels|sweep_efficiency|train_speed)\.py(?!.*\s--smoke(\s|$))",
     "a full benchmark: minutes"),
    ("not_run", r"^python benchmarks/gpu_rehearsal\.py(\s|$)", "the CUDA rehearsal: a GPU machine"),
    ("not_run", r"^python benchmarks/(scale|loader)\.py(\s|$)",
     "every stage at the real sets' sizes, a multi-GB loader cache: minutes (tests/benchmarks runs --smoke)"),
    ("not_run", r"^ray (start|stop|status|up|down|dashboard|get-auth-token|job)(\s|$)",
     "a Ray cluster (tests/cluster/test_job_submit.py submits the README's job to a local head)"),
    ("not_run", r"^(\.venv/bin/)?mlflow (ui|server)\s", "a server: runs until stopped"),
    ("not_run", r"^(export )?[A-Z_][A-Z0-9_]*=", "shell variables of the cluster commands after them"),
    ("not_run", r"^(python -m venv \S+ && )?(\.venv/bin/)?pip install\s", "an install from a package index"),
    ("not_run", r"^docker build\s", "builds the cluster node image"),
]


@dataclass(frozen=True)
class Command:
    text: str  # continuations joined, comment dropped, whitespace collapsed
    source: str  # "README.md:123" (the first line)
    kind: str | None  # a class of KINDS, or None when no rule matches
    why: str = ""
    expect: tuple[str, ...] = field(default=(), compare=False)  # comment lines right after it (shown output)

    @property
    def normalized(self) -> str:
        return normalize(self.text)

    def argv(self, substitutions: dict[str, str] | None = None) -> list[str]:
        """The command as a process argument list, run without a shell: a leading ``python`` (or
        ``.venv/bin/python``) becomes this interpreter; ``substitutions`` replace placeholders
        such as ``<run id>`` first."""
        text = self.text
        for old, new in (substitutions or {}).items():
            text = text.replace(old, new)
        argv = shlex.split(text)
        if bad := [t for t in argv if t in SHELL_OPERATORS]:
            raise ValueError(f"{self.source}: {self.text!r} needs a shell ({bad[0]!r}); documented commands that the "
                             "tests run must be one plain process")
        if re.fullmatch(r"(\.venv/bin/)?python3?", argv[0]):
            argv[0] = sys.executable
        return argv


def normalize(text: str) -> str:
    return re.sub(r"^(\.venv/bin/)?python3? ", "python ", text)


def classify(text: str) -> tuple[str | None, str]:
    for kind, pattern, why in RULES:
        if re.search(pattern, normalize(text)):
            return kind, why
    return None, ""


def markdown_files(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def _blocks(text: str) -> list[tuple[str, int, list[str]]]:
    """Fenced code blocks: (language, line number of the first content line, lines)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i + 1
        j = start
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        out.append((lang, start + 1, lines[start:j]))
        i = j + 1
    return out


def strip_comment(line: str) -> str:
    """``line`` without its ``#`` comment (a ``#`` at the start or after a blank, outside quotes)."""
    quote, prev, i = None, " ", 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and quote != "'":
            prev, i = "x", i + 2
            continue
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and prev.isspace():
            return line[:i]
        prev, i = ch, i + 1
    return line


@dataclass
class _Reading:
    """A command being read: its first line, text so far, and the comment lines after it."""

    line: int
    raw: str = ""
    expect: list[str] = field(default_factory=list)
    closed: bool = False  # a blank line or another command came after it


def _commands_of_block(lang: str, first: int, lines: list[str], where: str) -> list[Command]:
    found: list[_Reading] = []
    pending: _Reading | None = None
    for n, raw in enumerate(lines, start=first):
        line = raw.rstrip()
        if pending is None:
            if lang == "console":
                if not line.lstrip().startswith("$ "):
                    continue  # output
                line = line.lstrip()[2:]
            stripped = line.strip()
            if not stripped or not stripped.startswith("#"):
                if found:
                    found[-1].closed = True
                if not stripped:
                    continue
            else:
                if found and not found[-1].closed:
                    found[-1].expect.append(stripped[1:].strip())
                continue
            pending = _Reading(n)
        if line.endswith("\\"):
            pending.raw += line[:-1] + " "
            continue
        pending.raw += line
        found.append(pending)
        pending = None
    if pending is not None:
        found.append(pending)
    out = []
    for c in found:
        text = " ".join(strip_comment(c.raw).split())
        if not text:
            continue
        kind, why = classify(text)
        out.append(Command(text, f"{where}:{c.line}", kind, why, tuple(c.expect)))
    return out


def all_commands(repo: Path = REPO) -> list[Command]:
    """Every command of every shell block of README.md and docs/*.md, in document order."""
    out: list[Command] = []
    for path in markdown_files(repo):
        where = path.relative_to(repo).as_posix()
        for lang, first, lines in _blocks(path.read_text(encoding="utf-8")):
            if lang in SHELL_LANGS:
                out += _commands_of_block(lang, first, lines, where)
    return out


def documented_commands(kind: str | None = None, repo: Path = REPO) -> list[Command]:
    """The documented commands of one class (``quick``, ``needs_outputs``, ``not_run``), or all
    of them with ``kind=None``. Unclassified commands have ``kind`` None."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind {kind!r}: one of {', '.join(KINDS)}")
    return [c for c in all_commands(repo) if kind is None or c.kind == kind]


def _without_fences(text: str) -> str:
    return re.sub(r"^(```+|~~~+).*?^\1[ \t]*$", "", text, flags=re.S | re.M)


def benchmark_commands(repo: Path = REPO) -> list[Command]:
    """Every ``python benchmarks/...`` command, in a shell block or an inline code span (a span
    may wrap across lines), whatever its class: the flags are checked against the script."""
    out = [c for c in all_commands(repo) if c.normalized.startswith("python benchmarks/")]
    for path in markdown_files(repo):
        where = path.relative_to(repo).as_posix()
        text = path.read_text(encoding="utf-8")
        body = _without_fences(text)
        for m in re.finditer(r"(?<!`)`((?:\.venv/bin/)?python3? benchmarks/[^`]+)`(?!`)", body):
            span = " ".join(m.group(1).split())
            line = text[: text.find(m.group(0))].count("\n") + 1 if m.group(0) in text else 0
            kind, why = classify(span)
            out.append(Command(span, f"{where}:{line}", kind, why))
    return out


# ---------------------------------------------------------------------------------------------
# needs_outputs: run after `dvc repro`
# ---------------------------------------------------------------------------------------------

INPUT_ROWS = 4  # rows of a documented --input file written from the prepared test split


def stage_env(repo: Path) -> dict[str, str]:
    """The environment `dvc repro` gives the stages in ``repo`` (tests/dvc_workspace.py): the
    copy's own code, no MLflow or Ray settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(repo)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def _write_input(repo: Path, path: Path, dataset: str) -> None:
    """A documented ``--input`` file (CSV or JSONL: ``image`` relative to the file, ``text``)
    from the first rows of the prepared test split."""
    import pandas as pd

    from mitp.data.manifests import read_split

    manifest = read_split(repo / "data" / "prepared" / dataset, "test")
    rows = [{"image": os.path.relpath(manifest.image_path(i), path.parent), "text": manifest.frame["text"].iat[i]}
            for i in range(min(INPUT_ROWS, len(manifest.frame)))]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def needs_outputs_argv(repo: Path) -> list[tuple[Command, list[str]]]:
    """The ``needs_outputs`` commands ready to run in ``repo`` after its `dvc repro`: ``<run id>``
    is the run of ``metrics/<dataset>/train_mitp.json``, and each ``--input`` file that does not
    exist is written from the prepared test split."""
    out = []
    for cmd in documented_commands("needs_outputs", repo):
        argv = shlex.split(cmd.text)
        dataset = argv[argv.index("--dataset") + 1] if "--dataset" in argv else "synthetic"
        subs = {}
        if "<run id>" in cmd.text:
            metrics = json.loads((repo / "metrics" / dataset / "train_mitp.json").read_text(encoding="utf-8"))
            subs["<run id>"] = metrics["run_id"]
        argv = cmd.argv(subs)
        if "--input" in argv and not (src := repo / argv[argv.index("--input") + 1]).exists():
            _write_input(repo, src, dataset)
        out.append((cmd, argv))
    return out


def run_needs_outputs(repo: Path, timeout: float = 600) -> list[tuple[Command, subprocess.CompletedProcess]]:
    """Run every ``needs_outputs`` command in ``repo`` (a repository after `dvc repro`, e.g. the
    copy of tests/pipeline/test_dvc_repro.py), with the environment the stages had; each must
    exit 0 (``evaluate``: a JSON last line; ``predict``: one output row per input row)."""
    results = []
    for cmd, argv in needs_outputs_argv(repo):
        proc = subprocess.run(argv, cwd=repo, env=stage_env(repo), capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{cmd.source}: {cmd.text}\nexit {proc.returncode}\n{proc.stderr[-3000:]}"
        if "pipeline.evaluate" in cmd.text:
            json.loads(proc.stdout.strip().splitlines()[-1])
        if "pipeline.predict" in cmd.text:
            src, dst = (repo / argv[argv.index(flag) + 1] for flag in ("--input", "--output"))
            n_in = sum(1 for ln in src.read_text(encoding="utf-8").splitlines()[(src.suffix == ".csv"):] if ln.strip())
            n_out = sum(1 for ln in dst.read_text(encoding="utf-8").splitlines()[(dst.suffix == ".csv"):] if ln.strip())
            assert n_out == n_in, f"{cmd.source}: {n_in} input rows, {n_out} output rows"
        results.append((cmd, proc))
    return results
