"""shell/runlib.sh: experiment selection, dry run, help, run bookkeeping and KEY=VALUE overrides.

Every test drives real bash through subprocess. Most use tests/common/fixtures/runlib_driver.sh
(six tiny experiments, `set -euo pipefail`); driver-misuse cases write a small driver into tmp_path.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNLIB = REPO / "shell" / "runlib.sh"
DRIVER = Path(__file__).resolve().parent / "fixtures" / "runlib_driver.sh"
NAMES = ["exp1_alpha", "exp2_beta", "exp3_gamma", "exp4_delta", "exp5_epsilon", "exp6_quoting"]
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")

def _env() -> dict[str, str]:
    # Variables the fixture reads must come from the test only, never from the caller's shell.
    drop = ("EPOCHS", "FAIL", "OUT_ROOT")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("RUNLIB_")}


def run(tmp_path: Path, *args: str, driver: Path = DRIVER) -> subprocess.CompletedProcess:
    """Run a driver with OUT_ROOT=<tmp_path>/out prepended to its arguments."""
    cmd = ["bash", str(driver), f"OUT_ROOT={tmp_path / 'out'}", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60)


def out_dir(tmp_path: Path, k: int) -> Path:
    return tmp_path / "out" / ("exp 6" if k == 6 else f"exp{k}")


def dry_selected(proc: subprocess.CompletedProcess) -> list[int]:
    return [int(m) for m in re.findall(r"^\[(\d+)/6\] ", proc.stdout, flags=re.M)]


def ran(tmp_path: Path) -> list[int]:
    return [k for k in range(1, 7) if (out_dir(tmp_path, k) / "train.log").exists()]


def write_driver(tmp_path: Path, body: str, strict: bool = True) -> Path:
    path = tmp_path / "driver.sh"
    head = "set -euo pipefail\n" if strict else ""
    path.write_text(f"{head}source {RUNLIB}\n{body}\n")
    return path


# ---------------------------------------------------------------- selection


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], [1, 2, 3, 4, 5, 6]),
        (["--start-from", "3"], [3, 4, 5, 6]),
        (["--start-from=5"], [5, 6]),
        (["--start-from", "6"], [6]),
        (["--run-count", "2"], [1, 2]),
        (["--run-count", "0"], [1, 2, 3, 4, 5, 6]),
        (["--run-count", "99"], [1, 2, 3, 4, 5, 6]),
        (["--start-from", "3", "--run-count", "2"], [3, 4]),
        (["--run-count=1", "--start-from=4"], [4]),
        (["--start-from", "2", "--start-from", "5"], [5, 6]),  # last occurrence wins
        (["--run-specific", "1,3,5"], [1, 3, 5]),
        (["--run-specific", "2-4"], [2, 3, 4]),
        (["--run-specific", "6,1,3-4,3,4-4"], [1, 3, 4, 6]),  # sorted, de-duplicated
        (["--run-specific", "2-3,1-2"], [1, 2, 3]),
        (["--run-specific=05"], [5]),  # leading zeros are decimal, not octal
        (["--run-specific", "08-09"], []),  # 8 and 9 would be invalid octal; both out of range
        (["--run-specific", "1", "--run-specific", "4"], [4]),
    ],
)
def test_runlib_selection(tmp_path, args, expected):
    proc = run(tmp_path, "--dry-run", *args)
    assert proc.returncode == 0, proc.stderr
    assert dry_selected(proc) == expected
    assert "notice" not in proc.stderr


def test_runlib_selection_matches_real_runs(tmp_path):
    proc = run(tmp_path, "--start-from", "2", "--run-count", "3")
    assert proc.returncode == 0, proc.stderr
    assert ran(tmp_path) == [2, 3, 4]
    assert "summary: selected 3, ran 3 (succeeded 3, failed 0), skipped 0" in proc.stdout
    proc = run(tmp_path, "--run-specific", "6,1")
    assert proc.returncode == 0, proc.stderr
    assert ran(tmp_path) == [1, 2, 3, 4, 6]


@pytest.mark.parametrize(
    ("args", "ignored"),
    [
        (["--start-from", "4"], "--start-from"),
        (["--run-count", "1"], "--run-count"),
        (["--start-from", "4", "--run-count", "1"], "--start-from --run-count"),
    ],
)
def test_runlib_run_specific_ignores_sequential_options_with_notice(tmp_path, args, ignored):
    proc = run(tmp_path, "--dry-run", "--run-specific", "2,3", *args)
    assert proc.returncode == 0, proc.stderr
    assert dry_selected(proc) == [2, 3]
    assert f"runlib: notice: --run-specific given; ignoring {ignored}\n" in proc.stderr


@pytest.mark.parametrize(
    ("spec", "expected", "dropped"),
    [
        ("2,5-9,12", [2, 5, 6], "7-9,12"),
        ("12,7,3,8", [3], "7-8,12"),  # named sorted and merged
        ("6-7", [6], "7"),
    ],
)
def test_runlib_run_specific_out_of_range_dropped_with_warning(tmp_path, spec, expected, dropped):
    proc = run(tmp_path, "--dry-run", "--run-specific", spec)
    assert proc.returncode == 0, proc.stderr
    assert dry_selected(proc) == expected
    assert f"runlib: warning: --run-specific: dropping {dropped} (outside 1..6)\n" in proc.stderr


@pytest.mark.parametrize(
    ("args", "warning"),
    [
        (["--run-specific", "7-9"], "--run-specific: dropping 7-9 (outside 1..6)"),
        (["--start-from", "9"], "--start-from 9 is beyond the last experiment (6)"),
    ],
)
def test_runlib_empty_selection_warns_and_runs_nothing(tmp_path, args, warning):
    proc = run(tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert f"runlib: warning: {warning}\n" in proc.stderr
    assert "runlib: warning: no experiment selected (of 6)\n" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--run-specific", "1,,3"], "--run-specific: malformed entry '' in '1,,3' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific", "1,"], "--run-specific: malformed entry '' in '1,' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific", ""], "--run-specific: malformed entry '' in '' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific", "a-b"], "--run-specific: malformed entry 'a-b' in 'a-b' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific", "1,5-2"], "--run-specific: malformed entry '5-2' in '1,5-2' (range start exceeds its end)"),
        (["--run-specific", "0"], "--run-specific: malformed entry '0' in '0' (experiments are numbered from 1)"),
        (["--run-specific", "0-3"], "--run-specific: malformed entry '0-3' in '0-3' (experiments are numbered from 1)"),
        (["--run-specific", "-3"], "--run-specific: malformed entry '-3' in '-3' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific", "1, 2"], "--run-specific: malformed entry ' 2' in '1, 2' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific", "1-2-3"], "--run-specific: malformed entry '1-2-3' in '1-2-3' (use N or A-B, e.g. 1,3-5)"),
        (["--run-specific"], "--run-specific: missing value"),
        (["--start-from", "0"], "--start-from: expected a positive integer, got '0'"),
        (["--start-from", "two"], "--start-from: expected a positive integer, got 'two'"),
        (["--start-from"], "--start-from: missing value"),
        (["--run-count", "-1"], "--run-count: expected a non-negative integer, got '-1'"),
        (["--run-count="], "--run-count: expected a non-negative integer, got ''"),
        (["--bogus"], "unknown option '--bogus' (see --help)"),
        (["--dry-run", "-x"], "unknown option '-x' (see --help)"),
        (["stray"], "unexpected argument 'stray' (options start with --, overrides are KEY=VALUE)"),
    ],
)
def test_runlib_rejects_bad_arguments(tmp_path, args, message):
    proc = run(tmp_path, *args)
    assert proc.returncode == 2
    assert proc.stderr == f"runlib: {message}\n"
    assert proc.stdout == ""
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- dry run and help


def _bash_words(quoted: str) -> list[str]:
    """Let bash itself parse a printed command, so the check covers $'..' quoting too."""
    proc = subprocess.run(
        ["bash", "-c", 'eval "set -- $1"; printf "%s\\0" "$@"', "_", quoted],
        capture_output=True, text=True, check=True, timeout=30,
    )
    return proc.stdout.split("\0")[:-1]


def test_runlib_dry_run_prints_quoted_commands_and_creates_nothing(tmp_path):
    proc = run(tmp_path, "--dry-run", "--run-specific", "2,6", "EPOCHS=7")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "runlib: dry run: 2 of 6 experiments selected; nothing is run"
    assert lines[1] == f"runlib: overrides: OUT_ROOT={tmp_path / 'out'} EPOCHS=7"
    assert lines[2] == "[2/6] exp2_beta"
    assert lines[3] == f"    out: {out_dir(tmp_path, 2)}"
    script = _bash_words(lines[4].removeprefix("    cmd: "))
    assert script[0:2] == ["sh", "-c"] and "\n" in script[2]  # multi-line script kept intact
    assert script[3:] == ["exp2", "2", "7"]
    assert lines[5] == "[6/6] exp6_quoting"
    assert lines[6] == f"    out: {out_dir(tmp_path, 6)}"
    assert _bash_words(lines[7].removeprefix("    cmd: ")) == [
        "printf", "<%s>\\n", "two words", "it's", "$HOME", "", "a;b|c", "--epochs=7",
    ]
    assert len(lines) == 8
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_runlib_dry_run_marks_finished_experiments(tmp_path):
    assert run(tmp_path, "--run-specific", "3").returncode == 0
    before = sorted(p.name for p in out_dir(tmp_path, 3).iterdir())
    proc = run(tmp_path, "--dry-run", "--run-specific", "3")
    assert "[3/6] exp3_gamma (finished: would be skipped)\n" in proc.stdout
    proc = run(tmp_path, "--dry-run", "--run-specific", "3", "--no-skip-completed")
    assert "[3/6] exp3_gamma (finished: would run again)\n" in proc.stdout
    proc = run(tmp_path, "--dry-run", "--run-specific", "3", "EPOCHS=1")
    assert "[3/6] exp3_gamma (finished by another command: the driver would stop; --overwrite runs it again)\n" \
        in proc.stdout
    (out_dir(tmp_path, 3) / "_FINISHED").write_text("2024-01-01 00:00:00\n")  # written before fingerprints
    proc = run(tmp_path, "--dry-run", "--run-specific", "3")
    assert "[3/6] exp3_gamma (finished without a fingerprint: the driver would stop; --overwrite runs it again)\n" \
        in proc.stdout
    assert sorted(p.name for p in out_dir(tmp_path, 3).iterdir()) == before


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_runlib_help_lists_options_and_experiments(tmp_path, flag):
    proc = run(tmp_path, flag, "--run-specific", "2")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith("Usage: runlib_driver.sh [options] [KEY=VALUE ...]\n")
    assert "runlib test driver: six tiny experiments" in text
    for option in ("--start-from N", "--run-specific LIST", "--run-count N", "--skip-completed",
                   "--no-skip-completed", "--dry-run", "-h, --help", "KEY=VALUE"):
        assert f"\n  {option} " in text, option
    for name, default in (("EPOCHS", "180"), ("OUT_ROOT", "./runs"), ("FAIL", "''")):
        assert f"\n  {name} (default: {default})\n" in text
    assert "Experiments (6):" in text
    for k, name in enumerate(NAMES, start=1):
        assert re.search(rf"^\s+{k}  {name}\s+{re.escape(str(out_dir(tmp_path, k)))}$", text, re.M), name
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- running


def test_runlib_runs_all_and_writes_logs_and_markers(tmp_path):
    proc = run(tmp_path, "EPOCHS=2")
    assert proc.returncode == 0, proc.stderr
    assert "runlib: summary: selected 6, ran 6 (succeeded 6, failed 0), skipped 0\n" in proc.stdout
    order = [int(k) for k in re.findall(r"^runlib: \[(\d)/6\] \S+: running", proc.stdout, re.M)]
    assert order == [1, 2, 3, 4, 5, 6]
    for k in range(1, 7):
        d = out_dir(tmp_path, k)
        assert sorted(p.name for p in d.iterdir()) == ["_FINISHED", "train.log"]  # no temp left
        marker = (d / "_FINISHED").read_text().splitlines()
        assert TIMESTAMP.fullmatch(marker[0]) and re.fullmatch(r"fingerprint sha256:[0-9a-f]{64}", marker[1])
        assert marker[-2:] == ["env EPOCHS 2", f"env OUT_ROOT {out_dir(tmp_path, 1).parent}"]
        log = (d / "train.log").read_text().splitlines()
        assert re.fullmatch(rf"==== runlib {TIMESTAMP.pattern} \[{k}/6\] {NAMES[k - 1]}: .* ====", log[0])
    log1 = (out_dir(tmp_path, 1) / "train.log").read_text()
    assert "stdout of exp1 epochs=2 env_epochs=2\n" in log1 and "stderr of exp1\n" in log1
    log6 = (out_dir(tmp_path, 6) / "train.log").read_text().splitlines()[1:]
    assert log6 == ["<two words>", "<it's>", "<$HOME>", "<>", "<a;b|c>", "<--epochs=2>"]
    assert "stdout of exp3 epochs=2" in proc.stdout  # tee also shows the output live


def test_runlib_skips_finished_and_reruns_with_no_skip_completed(tmp_path):
    assert run(tmp_path, "--run-specific", "1-2").returncode == 0
    marker = out_dir(tmp_path, 1) / "_FINISHED"
    marker.write_text("2000-01-01 00:00:00\n" + "".join(marker.read_text().splitlines(True)[1:]))
    proc = run(tmp_path, "--run-specific", "1-3")
    assert proc.returncode == 0, proc.stderr
    assert "runlib: [1/6] exp1_alpha: skipped, finished 2000-01-01 00:00:00\n" in proc.stdout
    assert "summary: selected 3, ran 1 (succeeded 1, failed 0), skipped 2" in proc.stdout
    assert (out_dir(tmp_path, 1) / "train.log").read_text().count("==== runlib ") == 1
    # The last of --no-skip-completed / --skip-completed wins.
    proc = run(tmp_path, "--run-specific", "1", "--no-skip-completed", "--skip-completed")
    assert "skipped 1" in proc.stdout
    proc = run(tmp_path, "--run-specific", "1", "--no-skip-completed")
    assert proc.returncode == 0, proc.stderr
    assert "summary: selected 1, ran 1 (succeeded 1, failed 0), skipped 0" in proc.stdout
    log = (out_dir(tmp_path, 1) / "train.log").read_text()
    assert log.count("==== runlib ") == 2 and log.count("stdout of exp1") == 2  # appended
    assert not marker.read_text().startswith("2000-01-01 00:00:00\n")


def test_runlib_finished_by_another_command_stops_before_any_run(tmp_path):
    assert run(tmp_path, "--run-specific", "1,6", "EPOCHS=2").returncode == 0
    logs = {k: (out_dir(tmp_path, k) / "train.log").read_text() for k in (1, 6)}
    # the same command and overrides: skipped
    proc = run(tmp_path, "--run-specific", "1,6", "EPOCHS=2")
    assert proc.returncode == 0 and "skipped 2" in proc.stdout
    # another EPOCHS: both finished runs are named, nothing runs (not even the unfinished experiment 2)
    proc = run(tmp_path, "--run-specific", "1-2,6", "EPOCHS=3")
    assert proc.returncode == 2
    errors = proc.stderr.splitlines()
    assert len(errors) == 2 and all(e.startswith("runlib: error: [") for e in errors)
    assert errors[0].startswith(f"runlib: error: [1/6] exp1_alpha: {out_dir(tmp_path, 1)}/_FINISHED was written "
                                "by another command (")
    assert "env EPOCHS 2 -> 3" in errors[0]
    assert errors[1].startswith("runlib: error: [6/6] exp6_quoting: ") and "--epochs 2 -> 3; env EPOCHS 2 -> 3" in errors[1]
    assert all("pass --overwrite to run it again, or give it another output folder" in e for e in errors)
    assert {k: (out_dir(tmp_path, k) / "train.log").read_text() for k in (1, 6)} == logs
    assert not out_dir(tmp_path, 2).exists()
    # a marker written before fingerprints is refused the same way
    (out_dir(tmp_path, 1) / "_FINISHED").write_text("2000-01-01 00:00:00\n")
    proc = run(tmp_path, "--run-specific", "1", "EPOCHS=2")
    assert proc.returncode == 2 and "_FINISHED has no fingerprint" in proc.stderr and "--overwrite" in proc.stderr
    # --overwrite runs them again and records the new command
    proc = run(tmp_path, "--run-specific", "1,6", "EPOCHS=3", "--overwrite")
    assert proc.returncode == 0 and "ran 2 (succeeded 2" in proc.stdout
    assert "env EPOCHS 3" in (out_dir(tmp_path, 6) / "_FINISHED").read_text()
    assert run(tmp_path, "--run-specific", "1,6", "EPOCHS=3").returncode == 0


def test_runlib_failure_continues_and_exits_nonzero(tmp_path):
    proc = run(tmp_path, "FAIL=2,4")
    assert proc.returncode == 1
    assert ran(tmp_path) == [1, 2, 3, 4, 5, 6]
    for k in range(1, 7):
        assert (out_dir(tmp_path, k) / "_FINISHED").exists() == (k not in (2, 4))
    assert "stdout of exp4" in (out_dir(tmp_path, 4) / "train.log").read_text()
    assert "runlib: [2/6] exp2_beta: FAILED: exit status 3; continuing\n" in proc.stderr
    assert "summary: selected 6, ran 6 (succeeded 4, failed 2), skipped 0" in proc.stdout
    assert proc.stderr.endswith(
        "runlib: failed experiments: 2 exp2_beta (exit status 3); 4 exp4_delta (exit status 3)\n"
    )


def test_runlib_failed_rerun_removes_old_marker(tmp_path):
    assert run(tmp_path, "--run-specific", "1").returncode == 0
    proc = run(tmp_path, "--run-specific", "1", "--no-skip-completed", "FAIL=1")
    assert proc.returncode == 1
    assert not (out_dir(tmp_path, 1) / "_FINISHED").exists()


def test_runlib_unwritable_output_folder_counts_as_failure(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "exp1").write_text("a file where the folder should be")
    proc = run(tmp_path, "--run-specific", "1-2")
    assert proc.returncode == 1
    assert ran(tmp_path) == [2]
    assert "failed experiments: 1 exp1_alpha (cannot create output folder" in proc.stderr


@pytest.mark.parametrize("strict", [True, False])
def test_runlib_exit_status_of_command_survives_tee(tmp_path, strict):
    driver = write_driver(
        tmp_path,
        'runlib_parse_args "$@"\n'
        "runlib_add bad out/bad -- sh -c 'echo partial; exit 7'\n"
        "runlib_add good out/good -- true\n"
        "runlib_run",
        strict=strict,
    )
    proc = run(tmp_path, driver=driver)
    assert proc.returncode == 1
    assert "failed experiments: 1 bad (exit status 7)\n" in proc.stderr
    assert (tmp_path / "out/good/_FINISHED").exists()
    assert "partial" in (tmp_path / "out/bad/train.log").read_text()


def test_runlib_command_environment(tmp_path):
    driver = write_driver(
        tmp_path,
        'runlib_parse_args "$@"\n'
        'if runlib_will_execute; then echo PREFLIGHT; fi\n'
        "runlib_add first out/a -- sh -c 'echo \"$RUNLIB_EXP_INDEX|$RUNLIB_EXP_NAME|$RUNLIB_EXP_OUT\"'\n"
        "runlib_add second out/b -- sh -c 'echo \"[$value][$key][$SPACED]\"'\n"
        "runlib_run",
    )
    # value/key are names of locals inside runlib; the overrides must still reach the command.
    proc = run(tmp_path, "value=3", "key=k=v", "SPACED=a b", driver=driver)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("PREFLIGHT\n")
    assert "1|first|out/a\n" in (tmp_path / "out/a/train.log").read_text()
    assert "[3][k=v][a b]\n" in (tmp_path / "out/b/train.log").read_text()
    for flag in ("--dry-run", "--help"):
        assert "PREFLIGHT" not in run(tmp_path, flag, driver=driver).stdout


# ---------------------------------------------------------------- KEY=VALUE overrides


def test_runlib_overrides_reach_definitions_and_commands(tmp_path):
    proc = run(tmp_path, "--run-specific", "1", "EPOCHS=1", "FAIL=")
    assert proc.returncode == 0, proc.stderr
    log = (out_dir(tmp_path, 1) / "train.log").read_text()
    assert "stdout of exp1 epochs=1 env_epochs=1\n" in log
    assert f"(overrides: OUT_ROOT={tmp_path / 'out'} EPOCHS=1 FAIL=) ====" in log.splitlines()[0]


def test_runlib_undeclared_override_warns(tmp_path):
    proc = run(tmp_path, "--dry-run", "EPOCH=1")
    assert proc.returncode == 0
    assert (
        "runlib: warning: override 'EPOCH' is not a variable of this driver "
        "(declared: EPOCHS OUT_ROOT FAIL); it only reaches the commands' environment\n"
    ) in proc.stderr
    assert re.search(r"exp1 1 180$", proc.stdout, re.M)  # the typo did not change EPOCHS


@pytest.mark.parametrize(
    ("arg", "reason"),
    [
        ("1X=2", "'1X' is not a valid variable name"),
        ("A-B=3", "'A-B' is not a valid variable name"),
        ("=4", "'' is not a valid variable name"),
        ("EPOCHS.x=1", "'EPOCHS.x' is not a valid variable name"),
        ("RUNLIB_DRY_RUN=1", "names starting with RUNLIB_, _RUNLIB_ or _rl_ are reserved for runlib"),
        ("_rl_key=1", "names starting with RUNLIB_, _RUNLIB_ or _rl_ are reserved for runlib"),
        ("UID=0", "'UID' is a read-only shell variable"),
    ],
)
def test_runlib_rejects_invalid_override_key(tmp_path, arg, reason):
    proc = run(tmp_path, arg)
    assert proc.returncode == 2
    assert proc.stderr == f"runlib: invalid override '{arg}': {reason}\n"
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- driver mistakes


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('runlib_parse_args "$@"\nrunlib_add a out/a echo hi\nrunlib_run',
         "runlib_add: expected NAME OUT_DIR -- CMD [ARG...] at {driver}:4"),
        ('runlib_parse_args "$@"\nrunlib_add a out/a --\nrunlib_run',
         "runlib_add: expected NAME OUT_DIR -- CMD [ARG...] at {driver}:4"),
        ('runlib_parse_args "$@"\nrunlib_add a out/x -- true\nrunlib_add b out/x -- true\nrunlib_run',
         "runlib_add: output folder 'out/x' of 'b' already used by experiment 1 'a' at {driver}:5"),
        ('runlib_parse_args "$@"\nrunlib_add "" out/a -- true\nrunlib_run',
         "runlib_add: empty experiment name at {driver}:4"),
        ('runlib_parse_args "$@"\nrunlib_run',
         "runlib_run: no experiments registered; call runlib_add before runlib_run (at {driver}:4)"),
        ('runlib_add a out/a -- true\nrunlib_run',
         'runlib_run: call runlib_parse_args "$@" first (at {driver}:4)'),
        ('runlib_parse_args "$@"\nrunlib_var 9X 1',
         "runlib_var: invalid variable name '9X' at {driver}:4"),
    ],
)
def test_runlib_driver_mistakes_name_file_and_line(tmp_path, body, message):
    driver = write_driver(tmp_path, body)
    proc = run(tmp_path, driver=driver)
    assert proc.returncode == 2
    assert proc.stderr == "runlib: " + message.format(driver=driver) + "\n"
    assert not (tmp_path / "out").exists()
