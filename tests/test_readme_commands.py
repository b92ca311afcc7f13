"""Every command in the READMEs' shell code blocks runs as written (issue 17 §4).

The commands are read from the ```bash blocks (and the untagged blocks whose first line is a command) of
the top README and the five paper READMEs, with their line numbers; line continuations, comments, pipes,
``&&`` / ``;``, ``KEY=VALUE`` prefixes and ``cd`` are followed as a shell would. The default (CI) checks,
without training anything:

- the script or module each command runs exists (from the command's working directory);
- its flags parse with the script's real argparse parser (``get_args_parser`` / ``parse_args`` of the
  module, so an unknown, abbreviated or ill-typed flag fails); DCAL's ``--opts KEY=VALUE`` are applied
  to the named config with ``dcal.utils.config.load_config``; ``torchrun`` flags parse with torchrun's own
  parser; a runlib driver (``bash driver.sh ...``) runs with ``--dry-run`` and each command it prints is
  checked in the same way;
- every file the command needs from the repository exists (configs, ``requirements.txt``, the Dockerfile
  of ``docker build``, which is also checked statically), and every checkpoint / run folder it reads
  (``--model_path``, ``--checkpoint``, ``--pretrained_checkpoint``, ``RUN_DIR`` ...) is written by an earlier
  command of the same README (each trainer's outputs are computed from its parsed flags, with the
  paper's own run-name code), unless it is a user's file (an absolute path outside the repository, a
  CAPITALISED placeholder).

A failure names the README, the line, the command and what is wrong. The ``slow`` test runs the commands
of the READMEs that demo data can feed for real, with the tiny settings the papers' ``demo.sh`` use
appended (argparse: the last value wins), and checks that each file the static check says a command
writes is there.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
READMES = ["README.md", "dvxray/README.md", "charm_xray/README.md", "cxrlt/README.md", "xmnet/README.md",
           "dcal/README.md"]
# The folder a README's blocks start in: the repository root, except where the README says otherwise.
START_CWD = {"dvxray/README.md": "dvxray"}  # "To type the original commands literally ... run them inside dvxray/"
# Placeholders the READMEs use for the repository itself.
ROOT_ALIASES = ("/path/to/repo",)
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMAND_WORDS = {"python", "python3", "bash", "sh", "torchrun", "cd", "pip", "docker", "conda", "cp", "env"}


# ----------------------------------------------------------------------------------------------------
# reading the READMEs


@dataclass
class Command:
    readme: str
    line: int
    text: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)

    def where(self) -> str:
        text = self.text if len(self.text) <= 160 else self.text[:157] + "..."
        return f"{self.readme}:{self.line}: `{text}`"


def shell_blocks(text: str) -> list[tuple[int, list[tuple[int, str]]]]:
    """(first line, [(line number, line)]) of each shell code block: tagged bash/sh/shell/console, or
    untagged with a command word first."""
    blocks, current, lang, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if current is None:
                current, lang, start = [], stripped[3:].strip().lower(), number
            else:
                first = next((s.split()[0] for _, s in current if s.strip() and not s.lstrip().startswith("#")), "")
                if lang in SHELL_LANGS or (lang == "" and first in COMMAND_WORDS):
                    blocks.append((start, current))
                current = None
            continue
        if current is not None:
            current.append((number, line))
    return blocks


def joined_lines(lines: Iterable[tuple[int, str]], *, skip_comments: bool = False) -> Iterator[tuple[int, str]]:
    """(first line number, logical line) with backslash continuations joined; ``skip_comments`` drops
    blank and comment lines (also inside a continuation, as Docker does)."""
    buffer, first = "", 0
    for number, line in lines:
        if skip_comments and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buffer:
            first = number
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        yield first, buffer + line
        buffer = ""


def split_commands(readme: str, lines: list[tuple[int, str]]) -> list[Command]:
    """The block's commands: continuations joined, comments dropped, split at ``|``, ``&&``, ``||``, ``;``."""
    commands = []
    for first, logical in joined_lines(lines):
        lexer = shlex.shlex(logical, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens, part = list(lexer), []
        display = re.sub(r"\s+", " ", _strip_comment(logical)).strip()
        for token in [*tokens, ";"]:
            if token in {";", "&&", "||", "|", "&"}:
                if part:
                    env = {}
                    while part and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", part[0]):
                        key, _, value = part.pop(0).partition("=")
                        env[key] = value
                    if part:
                        commands.append(Command(readme, first, display, part, env))
                part = []
            else:
                part.append(token)
    return commands


def _strip_comment(line: str) -> str:
    """``line`` without its trailing comment (for the failure messages)."""
    out, in_quote = [], None
    for i, ch in enumerate(line):  # the first # outside quotes that starts a word
        if in_quote:
            in_quote = None if ch == in_quote else in_quote
        elif ch in "'\"":
            in_quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            break
        out.append(ch)
    return "".join(out)


def readme_commands(readme: str, root: Path = ROOT) -> list[tuple[int, list[Command]]]:
    text = (root / readme).read_text(encoding="utf-8")
    return [(start, split_commands(readme, lines)) for start, lines in shell_blocks(text)]


# ----------------------------------------------------------------------------------------------------
# the scripts: parsers, the files they read and write


def _is_placeholder(value: str) -> bool:
    """RUN_DIR, RUN1, OUT/checkpoint_best.pth, X.pt: a name the user replaces."""
    return any(re.fullmatch(r"[A-Z][A-Z0-9_]*(\.[a-z]+)?", part) for part in Path(value).parts)


def _resolve(cwd: str, value: str) -> str:
    for alias in ROOT_ALIASES:
        if value == alias or value.startswith(alias + "/"):
            value = str(ROOT) + value[len(alias):]
    return os.path.normpath(os.path.join(cwd, value))


def _in_repo(path: str) -> bool:
    return path == str(ROOT) or path.startswith(str(ROOT) + os.sep)


def _xmnet_outputs(args: argparse.Namespace, cwd: str) -> list[str]:
    from xmnet.engine_xmnet import run_name

    out = args.output_dir or os.path.join("output", args.backbone_class, run_name(args))
    return [_resolve(cwd, os.path.join(out, f)) for f in ("", "best_model.pth", "checkpoint_best.pth",
                                                          "checkpoint_last.pth", "metrics.json")]


def _charm_outputs(args: argparse.Namespace, cwd: str) -> list[str]:
    from charm_xray.pipeline import exp_name_for, grid_settings

    settings = grid_settings(args)
    names = [exp_name_for(*s) for s in settings] if settings else [args.exp_name]
    files = []
    for name in names:
        files += [f"models/phase1_{name}.pth", f"models/final_{name}.pth", f"runs/{name}", f"runs/{name}/metrics.json"]
    return [_resolve(cwd, os.path.join(args.output_dir, f)) for f in files]


def _run_dir_outputs(*names: str) -> Callable[[argparse.Namespace, str], list[str]]:
    def outputs(args: argparse.Namespace, cwd: str) -> list[str]:
        return [_resolve(cwd, os.path.join(args.output_dir, n)) for n in ("", "metrics.json", *names)]
    return outputs


def _dcal_outputs(args: argparse.Namespace, cwd: str) -> list[str]:
    cfg = _dcal_config(args, cwd)
    return [_resolve(cwd, os.path.join(cfg.save_dir, n)) for n in ("", "checkpoint_best.pth", "checkpoint_last.pth",
                                                                   "metrics.json")]


def _dcal_config(args: argparse.Namespace, cwd: str):
    from dcal.utils.config import load_config

    return load_config(_resolve(cwd, args.config), args.opts)


@dataclass
class Spec:
    """What a script reads that an earlier README command must write (flag dests; "*" = positionals of
    that dest), the repository files it reads, and what it writes (from its parsed flags)."""
    consumes: tuple[str, ...] = ()
    repo_files: tuple[str, ...] = ()
    produces: Callable[[argparse.Namespace, str], list[str]] | None = None
    validate: Callable[[argparse.Namespace, str], object] | None = None
    produces_dir: Callable[[argparse.Namespace, str], str] | None = None  # a folder: all of it counts as written


SPECS: dict[str, Spec] = {
    "xmnet/Train.py": Spec(consumes=("model_path", "resume"), produces=_xmnet_outputs),
    "charm_xray/train.py": Spec(produces=_charm_outputs),
    "charm_xray/test_checkpoint.py": Spec(consumes=("checkpoint",)),
    "dvxray/main_finetune.py": Spec(consumes=("resume",),  # --finetune: the user's converted weights
                                    produces=_run_dir_outputs("checkpoint_best.pth", "checkpoint_last.pth")),
    "dvxray/eval_only.py": Spec(consumes=("checkpoint",)),
    "cxrlt/train_stage1.py": Spec(consumes=("resume",),
                                  produces=_run_dir_outputs("best_convnext_model.pth", "checkpoint_last.pth")),
    "cxrlt/train_stage2.py": Spec(consumes=("pretrained_checkpoint", "resume"),
                                  produces=_run_dir_outputs("best_padchest_db_cas.pth", "checkpoint_last.pth")),
    "cxrlt/inference.py": Spec(consumes=("checkpoints",), produces=lambda a, cwd: [_resolve(cwd, a.output)]),
    "cxrlt/export_safetensors.py": Spec(consumes=("checkpoint",), produces=lambda a, cwd: [_resolve(cwd, a.output)]),
    "dcal/scripts/train_fgvc.py": Spec(consumes=("resume",), repo_files=("config",), produces=_dcal_outputs,
                                       validate=_dcal_config),
    "dcal/scripts/train_reid.py": Spec(consumes=("resume",), repo_files=("config",), produces=_dcal_outputs,
                                       validate=_dcal_config),
    "dcal/scripts/eval_fgvc.py": Spec(consumes=("checkpoint",), repo_files=("config",), validate=_dcal_config),
    "dcal/scripts/eval_reid.py": Spec(consumes=("checkpoint",), repo_files=("config",), validate=_dcal_config),
    "common/compare.py": Spec(consumes=("run_dirs",)),
    "common/synth/__main__.py": Spec(produces_dir=lambda a, cwd: _resolve(cwd, a.out_dir)),
}
# Written by a bash script (not a runlib driver): a folder whose files count as written.
SCRIPT_OUTPUT_DIRS = {"dvxray/convert_all_no_head.sh": "student_weights_switch_no_head"}


def _module_name(script: Path) -> str:
    rel = script.relative_to(ROOT).with_suffix("")
    return ".".join(rel.parts)


def parse_script_args(script: Path, argv: list[str]) -> tuple[argparse.Namespace | None, str | None]:
    """Parse ``argv`` with the script's own parser: (args, None), or (None, argparse's message)."""
    module = importlib.import_module(_module_name(script))
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if callable(getattr(module, "parse_args", None)):
                return module.parse_args(argv), None
            if not callable(getattr(module, "get_args_parser", None)):
                return None, f"{script.relative_to(ROOT)} has no get_args_parser() / parse_args() to check the flags with"
            parser = module.get_args_parser()
            if not parser.add_help:
                parser = argparse.ArgumentParser(prog=parser.prog, parents=[parser], allow_abbrev=parser.allow_abbrev)
            return parser.parse_args(argv), None
    except SystemExit as exc:
        if exc.code in (0, None):  # --help
            return None, None
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        return None, (lines[-1] if lines else f"exit status {exc.code}")


# ----------------------------------------------------------------------------------------------------
# the checker


@dataclass
class World:
    """What a README's commands have written so far (absolute or placeholder-rooted paths)."""
    produced: dict[str, int] = field(default_factory=dict)  # path -> README line of the command writing it
    produced_dirs: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked: int = 0

    def add(self, paths: list[str], line: int, *, dirs: bool = False) -> None:
        for path in paths:
            (self.produced_dirs if dirs else self.produced).setdefault(path, line)

    def problem(self, text: str) -> None:
        if text not in self.problems:  # a driver's cases repeat their command's problem
            self.problems.append(text)

    def has(self, path: str) -> bool:
        return path in self.produced or any(path.startswith(d + os.sep) for d in self.produced_dirs)


def check_readme(readme: str) -> World:
    world = World()
    for _, commands in readme_commands(readme):
        cwd = str(ROOT / START_CWD.get(readme, ""))
        for cmd in commands:
            world.checked += 1
            cwd = check_command(cmd, cmd.argv, cwd, world, dry=False)
    return world


def check_command(cmd: Command, argv: list[str], cwd: str, world: World, *, dry: bool) -> str:
    """Check one command (``argv``, run in ``cwd``); returns the working directory after it."""
    def fail(msg: str) -> None:
        world.problem(f"{cmd.where()}: {msg}")

    word, rest = argv[0], argv[1:]
    name = os.path.basename(word)
    if word == "env":
        while rest and "=" in rest[0]:
            rest = rest[1:]
        return check_command(cmd, rest, cwd, world, dry=dry) if rest else cwd
    if word == "cd":
        target = _resolve(cwd, rest[0] if rest else str(Path.home()))
        if _in_repo(target) and not os.path.isdir(target):
            fail(f"cd: no folder {os.path.relpath(target, ROOT)} in the repository")
        return target
    if re.fullmatch(r"python(3(\.\d+)?)?", name):
        check_python(cmd, rest, cwd, world, dry=dry, fail=fail)
    elif name == "torchrun":
        from torch.distributed.run import get_args_parser as torchrun_parser

        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                targs = torchrun_parser().parse_args(rest)
        except SystemExit:
            fail(f"torchrun flags: {err.getvalue().strip().splitlines()[-1]}")
            return cwd
        check_python(cmd, [targs.training_script, *targs.training_script_args], cwd, world, dry=dry, fail=fail)
    elif name in ("bash", "sh"):
        check_bash(cmd, rest, cwd, world, dry=dry, fail=fail)
    elif name == "pip":
        check_pip(rest, cwd, fail)
    elif name == "docker":
        if rest[:1] != ["build"]:
            fail(f"no rule for `docker {rest[0] if rest else ''}` in tests/test_readme_commands.py")
        else:
            check_docker_build(rest[1:], cwd, fail)
    elif name == "cp":
        srcs, dst = [a for a in rest[:-1] if not a.startswith("-")], rest[-1]
        for src in srcs:
            path = _resolve(cwd, src)
            if not dry and not world.has(path) and not os.path.exists(path):
                fail(f"cp: {src} is not written by an earlier command of {cmd.readme}")
            target = _resolve(cwd, dst)
            world.add([os.path.join(target, os.path.basename(path)) if dst.endswith("/") or dst == "." else target],
                      cmd.line)
    elif name == "conda":
        if "-f" in rest and not os.path.isfile(_resolve(cwd, rest[rest.index("-f") + 1])):
            fail(f"conda: {rest[rest.index('-f') + 1]} not found")
    else:
        fail(f"no rule for the command `{word}` in tests/test_readme_commands.py (add one)")
    return cwd


def check_python(cmd: Command, rest: list[str], cwd: str, world: World, *, dry: bool,
                 fail: Callable[[str], None]) -> None:
    while rest and rest[0].startswith("-") and rest[0] not in ("-m", "-c"):
        rest = rest[1:]  # -u, -O, ...
    if not rest or rest[0] == "-c":
        return
    if rest[0] == "-m":
        module, argv = rest[1], rest[2:]
        base = ROOT / module.replace(".", "/")
        script = base / "__main__.py" if base.is_dir() else base.with_suffix(".py")
        if not script.is_file():
            fail(f"python -m {module}: no module {module} in the repository")
            return
    else:
        script_path, argv = _resolve(cwd, rest[0]), rest[1:]
        if not _in_repo(script_path):
            fail(f"{rest[0]} is not a script of the repository (from {_show(cwd)})")
            return
        script = Path(script_path)
        if not script.is_file():
            fail(f"script not found: {rest[0]} (from {_show(cwd)})")
            return
    rel = script.relative_to(ROOT).as_posix()
    args, error = parse_script_args(script, argv)
    if error:
        fail(f"{rel}: {error}")
        return
    if args is None:  # --help
        return
    spec = SPECS.get(rel, Spec())
    for dest in spec.repo_files:
        value = getattr(args, dest)
        if value and not os.path.isfile(_resolve(cwd, value)):
            fail(f"{rel}: --{dest} {value}: no such file in the repository (from {_show(cwd)})")
            return
    if spec.validate is not None:
        try:
            spec.validate(args, cwd)
        except Exception as exc:  # the script's own refusal of the config / overrides
            fail(f"{rel}: {type(exc).__name__}: {exc}")
            return
    if not dry:
        for dest in spec.consumes:
            values = getattr(args, dest, None)
            for value in values if isinstance(values, list) else [values]:
                if not value or value == "auto" or _is_placeholder(value):
                    continue
                path = _resolve(cwd, value)
                if not _in_repo(path) and not any(path.startswith(a) for a in ROOT_ALIASES) and os.path.isabs(value):
                    continue  # a user's file (/data/..., /mnt/...)
                if not world.has(path) and not os.path.exists(path):
                    flag = f"--{dest}" if any(a.startswith(f"--{dest}") for a in argv) or dest != "run_dirs" else dest
                    made = sorted((line, p) for p, line in world.produced.items()
                                  if os.path.basename(p) == os.path.basename(path) and line < cmd.line)
                    hint = ("; earlier commands wrote " + ", ".join(f"{_show(p)} (line {line})" for line, p in made[:3])
                            if made else "")
                    fail(f"{rel}: {flag} {value} ({_show(path)}) is not written by an earlier command of "
                         f"{cmd.readme}{hint}")
        if spec.produces is not None:
            world.add(spec.produces(args, cwd), cmd.line)
        if spec.produces_dir is not None:
            world.add([spec.produces_dir(args, cwd)], cmd.line, dirs=True)


def check_bash(cmd: Command, rest: list[str], cwd: str, world: World, *, dry: bool,
               fail: Callable[[str], None]) -> None:
    if not rest:
        fail("bash without a script")
        return
    script = _resolve(cwd, rest[0])
    if not _in_repo(script):
        fail(f"{rest[0]} is not a script of the repository (from {_show(cwd)})")
        return
    if not os.path.isfile(script):
        fail(f"script not found: {rest[0]} (from {_show(cwd)})")
        return
    rel = os.path.relpath(script, ROOT)
    syntax = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    if syntax.returncode != 0:
        fail(f"{rel}: bash syntax error: {syntax.stderr.strip()}")
        return
    if rel in SCRIPT_OUTPUT_DIRS and not dry:
        world.add([_resolve(cwd, SCRIPT_OUTPUT_DIRS[rel])], cmd.line, dirs=True)
    if not _is_runlib_driver(Path(script)):
        return
    # a runlib driver: its plan (--dry-run) checks its own options and names each command it would run
    run_cwd = cwd if os.path.isdir(cwd) else str(ROOT)
    env = {**os.environ, **cmd.env, "PYTHON": sys.executable}
    res = subprocess.run(["bash", script, *rest[1:], "--dry-run"], cwd=run_cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    if res.returncode != 0:
        fail(f"{rel} --dry-run exits {res.returncode}: {(res.stderr.strip().splitlines() or [''])[-1]}")
        return
    planned = [shlex.split(line.split("cmd:", 1)[1]) for line in res.stdout.splitlines() if line.strip().startswith("cmd:")]
    if not planned and "--help" not in rest:
        fail(f"{rel}: the dry run lists no command")
    is_dry = dry or "--dry-run" in rest or "--help" in rest
    for argv in planned:
        check_command(cmd, argv, cwd, world, dry=is_dry)


def _is_runlib_driver(script: Path) -> bool:
    # a driver parses runlib's options (--dry-run among them); a script that sources runlib.sh only for
    # runlib_help_from_header (shell/test.sh, convert_all_no_head.sh) is not one
    text = script.read_text(encoding="utf-8", errors="replace")
    if "runlib_parse_args" in text:
        return True
    # a driver that sources a sibling driver (train_model_seg_unet3plus.sh sources train_model_seg.sh)
    return any("runlib_parse_args" in (script.parent / m).read_text(encoding="utf-8", errors="replace")
               for m in re.findall(r'source\s+"?\$HERE/([\w.]+\.sh)"?', text) if (script.parent / m).is_file())


def check_pip(rest: list[str], cwd: str, fail: Callable[[str], None]) -> None:
    if rest[:1] != ["install"]:
        fail(f"no rule for `pip {' '.join(rest[:1])}` in tests/test_readme_commands.py")
        return
    if "-r" in rest:
        req = rest[rest.index("-r") + 1]
        path = Path(_resolve(cwd, req))
        if not path.is_file():
            fail(f"pip install -r {req}: no such file ({_show(str(path))})")
            return
        # what pip would do, without an index: every requirement must be satisfied by this environment
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet",
                              "--disable-pip-version-check", "-r", str(path)], capture_output=True, text=True,
                             timeout=120)
        if res.returncode != 0:
            fail(f"pip install -r {req}: {(res.stderr.strip().splitlines() or ['?'])[-1]}")


def check_docker_build(rest: list[str], cwd: str, fail: Callable[[str], None]) -> None:
    dockerfile, context, i = None, None, 0
    while i < len(rest):
        arg = rest[i]
        if arg in ("-t", "--tag", "-f", "--file", "--build-arg", "--target", "--platform"):
            if arg in ("-f", "--file"):
                dockerfile = rest[i + 1]
            i += 2
            continue
        if not arg.startswith("-"):
            context = arg
        i += 1
    if context is None:
        fail("docker build without a build context")
        return
    ctx = Path(_resolve(cwd, context))
    path = Path(_resolve(cwd, dockerfile)) if dockerfile else ctx / "Dockerfile"
    if not path.is_file():
        fail(f"docker build: no Dockerfile at {_show(str(path))} (build context {_show(str(ctx))})")
        return
    for problem in dockerfile_problems(path, ctx):
        fail(f"docker build: {_show(str(path))}: {problem}")


def _show(path: str) -> str:
    return os.path.relpath(path, ROOT) if _in_repo(path) else path


# ----------------------------------------------------------------------------------------------------
# the Dockerfile, statically (no image is pulled or built here)


def dockerfile_instructions(path: Path) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out = []
    for first, logical in joined_lines(enumerate(path.read_text(encoding="utf-8").splitlines(), 1),
                                       skip_comments=True):
        word, _, args = logical.strip().partition(" ")
        out.append((first, word.upper(), args.strip()))
    return out


def _dockerignored(ctx: Path) -> list[str]:
    ignore = ctx / ".dockerignore"
    if not ignore.is_file():
        return []
    return [ln.strip() for ln in ignore.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")]


def dockerfile_problems(path: Path, ctx: Path) -> list[str]:
    """What keeps ``docker build`` of ``path`` in the context ``ctx`` from installing the project."""
    problems = []
    steps = dockerfile_instructions(path)
    froms = [(n, a) for n, w, a in steps if w == "FROM"]
    if not froms or not re.match(r"(docker\.io/(library/)?)?python:3\.11([.-]|$)", froms[0][1].split()[0]):
        problems.append(f"the first FROM must be a python:3.11 image, got {froms[0][1] if froms else 'none'}")
    ignored = _dockerignored(ctx)
    copied: list[str] = []
    for n, word, args in steps:
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in parts[:-1]:
            if not (ctx / src).exists():
                problems.append(f"line {n}: {word} {src}: not in the build context {ctx}")
            elif any(src.rstrip("/") == pat.rstrip("/") for pat in ignored):
                problems.append(f"line {n}: {word} {src}: excluded by .dockerignore")
            copied.append(src.rstrip("/"))
    install = [(n, a) for n, w, a in steps if w == "RUN" and re.search(r"pip install\b[^&;]*\s-e\s+\.(\s|$)|"
                                                                      r"pip install\b[^&;]*\s\.(\s|$)", a)]
    if not install:
        problems.append("no RUN pip install -e . (or pip install .) of the project")
    import tomllib

    project = tomllib.loads((ctx / "pyproject.toml").read_text(encoding="utf-8")) if (ctx / "pyproject.toml").is_file() else {}
    if "pyproject.toml" not in copied and "." not in copied:
        problems.append("pyproject.toml is not copied into the image")
    includes = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {}).get("include", [])
    needed = [p.rstrip("*") for p in includes] + ["shell"]  # shell/: runlib.sh of every bash driver
    if "." not in copied:
        missing = [p for p in needed if p not in copied]
        if missing:
            problems.append(f"the package folders {', '.join(missing)} are not copied (pyproject.toml includes them)")
    for heavy in (".venv", ".git", "demo_data", "demo_runs"):
        if (ctx / heavy).exists() and heavy not in ignored:
            problems.append(f".dockerignore does not exclude {heavy}/ (it would be sent as build context)")
    return problems


# ----------------------------------------------------------------------------------------------------
# the tests


@pytest.mark.parametrize("readme", READMES)
def test_readme_commands_parse_and_find_their_files(readme: str) -> None:
    world = check_readme(readme)
    assert world.checked, f"{readme}: no command found in its shell code blocks"
    assert not world.problems, f"{len(world.problems)} README command(s) would fail as written:\n" + "\n".join(
        world.problems)


def test_the_extractor_sees_every_block() -> None:
    """Continuations, comments, pipes and env prefixes are followed; every README has commands."""
    cmds = [c for readme in READMES for _, block in readme_commands(readme) for c in block]
    by_readme = {r: sum(1 for c in cmds if c.readme == r) for r in READMES}
    assert all(by_readme.values()), by_readme
    text = "```bash\nA=1 python x.py --a 1 \\\n  --b '#x' # note\ncd d && bash y.sh | tee l  # c\n```\n"
    (start, lines), = shell_blocks(text)
    got = split_commands("R.md", lines)
    assert [(c.line, c.argv, c.env) for c in got] == [
        (2, ["python", "x.py", "--a", "1", "--b", "#x"], {"A": "1"}),
        (4, ["cd", "d"], {}), (4, ["bash", "y.sh"], {}), (4, ["tee", "l"], {})]


OLD_XMNET = """```bash
docker build -t xmnet .
python -u xmnet/Train.py --xmnet --cls_included --backbone_class densenet161 --dataset soybean_2_1
python -u xmnet/Train.py --xmnet --seg_ild --freeze_all --dataparallel --data_dir ./data --backbone_class 'densenet161' \\
    --model_path best_model.pth --unet --transfer_to 0.250
```
"""
OLD_CHARM = "```bash\ncd charm_xray\npip install -r requirements.txt\npython train.py --no_such_flag 1\n```\n"


def test_the_checker_catches_the_issue_17_failures(tmp_path: Path) -> None:
    """The three README commands of issue 17 §4 as they were (a checkout without Dockerfile and
    requirements file, step 2 reading ./best_model.pth) fail with their README line and cause; so does an
    unknown flag."""
    world = World()
    old = "\n".join(OLD_XMNET.splitlines()[:2] + ["```"])  # the docker line, in a folder without a Dockerfile
    for _, lines in shell_blocks(old):
        for cmd in split_commands("xmnet/README.md", lines):
            check_command(cmd, cmd.argv, str(tmp_path), world, dry=False)
    for readme, text, cwd in (("xmnet/README.md", OLD_XMNET.replace("docker build", "# docker build"), ROOT),
                              ("charm_xray/README.md", OLD_CHARM, tmp_path)):
        (tmp_path / "charm_xray").mkdir(exist_ok=True)
        for _, lines in shell_blocks(text):
            here = str(cwd)
            for cmd in split_commands(readme, lines):
                if cmd.argv[:2] == ["python", "train.py"]:
                    here = str(ROOT / "charm_xray")  # the script is the repository's
                here = check_command(cmd, cmd.argv, here, world, dry=False)
    text = "\n".join(world.problems)
    assert "xmnet/README.md:2: `docker build -t xmnet .`: docker build: no Dockerfile at " in text, text
    assert ("charm_xray/README.md:3: `pip install -r requirements.txt`: pip install -r requirements.txt: no such "
            "file") in text, text
    assert re.search(r"xmnet/README\.md:4: `python -u xmnet/Train\.py .*`: xmnet/Train\.py: --model_path best_model\.pth "
                     r"\(best_model\.pth\) is not written by an earlier command of xmnet/README\.md; earlier commands "
                     r"wrote output/densenet161/XMNet_Classification/best_model\.pth \(line 3\)", text), text
    assert ("charm_xray/README.md:4: `python train.py --no_such_flag 1`: charm_xray/train.py: "
            "CHARM-Xray training: error: unrecognized arguments: --no_such_flag 1") in text, text
    assert len(world.problems) == 4, text


def test_requirements_txt_is_generated_from_pyproject() -> None:
    """charm_xray/requirements.txt (the original's `pip install -r requirements.txt`) equals what
    `python -m common.requirements` writes from pyproject.toml's dependencies."""
    import tomllib

    from common.requirements import requirements_text

    path = ROOT / "charm_xray" / "requirements.txt"
    assert path.read_text(encoding="utf-8") == requirements_text("charm_xray/requirements.txt"), (
        "charm_xray/requirements.txt is stale: run `python -m common.requirements charm_xray/requirements.txt`")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln and not ln.startswith("#")]
    assert lines == deps


def test_dockerfile_installs_the_project(tmp_path: Path) -> None:
    """`docker build -t xmnet .` in the repository root (checked statically: no image is pulled)."""
    assert dockerfile_problems(ROOT / "Dockerfile", ROOT) == []
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:22.04\nCOPY pyproject.toml no_such_dir/ ./\nRUN pip install torch\n", encoding="utf-8")
    problems = dockerfile_problems(bad, ROOT)
    assert any("python:3.11" in p for p in problems), problems
    assert any("COPY no_such_dir/: not in the build context" in p for p in problems), problems
    assert any("no RUN pip install -e ." in p for p in problems), problems
    assert any("common, dvxray" in p for p in problems), problems


def test_the_checker_catches_bad_opts_and_driver_options() -> None:
    world = World()
    text = ("```bash\npython dcal/scripts/train_fgvc.py --config dcal/configs/fgvc/cub200.yaml --opts training.no_such_key=1\n"
            "bash xmnet/train_model_cls.sh --no-such-option\ntorchrun --no_such_torchrun_flag 1 cxrlt/train_stage1.py\n"
            "python dcal/scripts/train_fgvc.py --config dcal/configs/fgvc/no_such.yaml\n```\n")
    for _, lines in shell_blocks(text):
        for cmd in split_commands("R.md", lines):
            check_command(cmd, cmd.argv, str(ROOT), world, dry=False)
    got = "\n".join(world.problems)
    assert len(world.problems) == 4, got
    assert "R.md:2: " in got and "ConfigError" in got and "no_such_key" in got, got
    assert "R.md:3: `bash xmnet/train_model_cls.sh --no-such-option`: xmnet/train_model_cls.sh --dry-run exits" in got, got
    assert "R.md:4: " in got and "torchrun flags:" in got, got
    assert "R.md:5: " in got and "--config dcal/configs/fgvc/no_such.yaml: no such file" in got, got


# ----------------------------------------------------------------------------------------------------
# slow: the commands that demo data can feed, for real


def _demo_tiny(paper: str) -> list[str]:
    """The TINY=(...) flags of ``<paper>/demo.sh`` (the demo's CPU-sized settings, reused here)."""
    text = (ROOT / paper / "demo.sh").read_text(encoding="utf-8")
    match = re.search(r"^TINY=\((.*?)\)", text, re.S | re.M)
    assert match, f"{paper}/demo.sh: no TINY=(...) array"
    return shlex.split(match.group(1))


@dataclass
class DemoWorld:
    synth: list[tuple[str, str, int]]  # (format, folder relative to the README's start folder, n)
    tiny: dict[str, list[str]]  # script -> flags appended (the last value wins in argparse)
    drop: tuple[str, ...] = ()  # flags (with their value) naming a user's file that demo data cannot give


SLOW_WORLDS = {
    "xmnet/README.md": DemoWorld(
        synth=[("xmnet", "data/soybean_2_1", 40)],
        tiny={"xmnet/Train.py": [*_demo_tiny("xmnet"), "--max_epoch", "1", "--n_trials", "2", "--xgb_n_estimators", "5",
                                 "--save_masks", "2", "--plots", "false"]},
        drop=("--pretrained_weights",)),
    "charm_xray/README.md": DemoWorld(
        synth=[("chestxray14", "charm_xray/data", 120)],
        tiny={"charm_xray/train.py": [*_demo_tiny("charm_xray"), "--lr_find_iters", "8", "--freeze_epochs", "1",
                                      "--phase1_epochs", "1", "--phase2_epochs", "1", "--plots", "false"],
              "charm_xray/test_checkpoint.py": ["--num_workers", "0", "--device", "cpu"]}),
}


@pytest.mark.slow
@pytest.mark.parametrize("readme", sorted(SLOW_WORLDS))
def test_readme_commands_run_on_demo_data(readme: str, tmp_path: Path) -> None:
    """Each python command of the README runs on synthetic data in the native layout (tiny settings
    appended), in a copy of the README's folders under tmp_path, and writes what the static check expects.
    Not run here: docker/pip (static and --dry-run checks above) and the bash drivers (their plans are
    checked; their cases are the same Train.py commands)."""
    spec = SLOW_WORLDS[readme]
    start = START_CWD.get(readme, "")
    for fmt, folder, n in spec.synth:
        subprocess.run([sys.executable, "-m", "common.synth", fmt, str(tmp_path / start / folder), "--n", str(n)],
                       cwd=ROOT, check=True, capture_output=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    failures = []
    for _, commands in readme_commands(readme):
        repo_cwd = str(ROOT / start)
        for cmd in commands:
            run_cwd = tmp_path / os.path.relpath(repo_cwd, ROOT)
            run_cwd.mkdir(parents=True, exist_ok=True)
            word = os.path.basename(cmd.argv[0])
            if word == "cd":
                repo_cwd = check_command(cmd, cmd.argv, repo_cwd, World(), dry=False)
                continue
            if word == "cp":
                subprocess.run(cmd.argv, cwd=run_cwd, check=True)
                continue
            if not re.fullmatch(r"python(3)?", word):
                continue
            argv = [a for a in cmd.argv[1:] if a != "-u"]
            if argv[0] == "-m":
                script, args = None, argv[2:]
                run = [sys.executable, "-m", argv[1]]
            else:
                script = Path(_resolve(repo_cwd, argv[0]))
                args, run = argv[1:], [sys.executable, "-u", str(script)]
            for flag in spec.drop:
                while flag in args:
                    i = args.index(flag)
                    del args[i:i + 2]
            rel = script.relative_to(ROOT).as_posix() if script else ""
            args = [*args, *spec.tiny.get(rel, [])]
            res = subprocess.run([*run, *args], cwd=run_cwd, env=env, capture_output=True, text=True, timeout=900)
            if res.returncode != 0:
                failures.append(f"{cmd.where()}: exit {res.returncode}: {(res.stderr.strip().splitlines() or [''])[-1]}")
                continue
            produces = SPECS.get(rel, Spec()).produces if script else None
            if produces is not None:
                parsed, _ = parse_script_args(script, args)
                missing = [p for p in produces(parsed, str(run_cwd)) if not os.path.exists(p)]
                if missing:
                    failures.append(f"{cmd.where()}: did not write {', '.join(os.path.relpath(p, tmp_path) for p in missing)}")
    assert not failures, "\n".join(failures)
