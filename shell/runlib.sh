# shellcheck shell=bash
# runlib.sh: shared experiment-selection and run bookkeeping for the bash drivers (<paper>/main.sh).
#
# It generalises the loop of the original DvXray main.sh: experiments numbered from 1, chosen by
# --start-from / --run-specific / --run-count, skipped when <out>/_FINISHED exists, output tee'd
# into <out>/train.log, and a failed run that does not stop later ones. Differences from the
# original: numbers above the last experiment are dropped with a warning (the original drops them
# silently), malformed lists and unknown options exit with status 2 (the original exits 1), and
# --dry-run, --help and KEY=VALUE overrides are new.
#
# Usage in a driver (bash 5; works with or without `set -euo pipefail`):
#
#     source "$(dirname "${BASH_SOURCE[0]}")/../shell/runlib.sh"
#     RUNLIB_DESCRIPTION="DvXray: five repeats of the paper setting"   # first lines of --help
#     runlib_parse_args "$@"              # FIRST: options + KEY=VALUE overrides (exported now)
#     runlib_var EPOCHS 180               # EPOCHS keeps an override, else becomes 180
#     runlib_var OUT_ROOT ./outputs
#     for k in 1 2 3; do
#         runlib_add "repeat$k" "$OUT_ROOT/run_$k" -- python -u main_finetune.py --epochs "$EPOCHS"
#     done
#     runlib_run                          # LAST: help / dry-run / run; returns 1 if any run failed
#
# Public API
#   runlib_parse_args ARGS...       Parse the driver's command line. Options:
#         --start-from N            first experiment in sequential mode (default 1)
#         --run-specific LIST       '1,3,5', '2-6', '1,3-5': sorted, de-duplicated; numbers above
#                                   the last experiment are dropped with a warning; --start-from
#                                   and --run-count are then ignored (with a notice)
#         --run-count N             in sequential mode select at most N experiments (0 = all);
#                                   finished experiments that get skipped still count
#         --skip-completed | --no-skip-completed   skip when <out>/_FINISHED exists and records this
#                                   experiment's fingerprint (default: skip); a _FINISHED with another
#                                   fingerprint (or none) stops the driver before any run (exit 2)
#         --overwrite               = --no-skip-completed: run finished experiments again
#         --dry-run                 print number, name, output folder and shell-quoted command of
#                                   each selected experiment; run and create nothing
#         -h | --help               usage plus the experiments table (printed by runlib_run)
#         KEY=VALUE                 `export KEY=VALUE` immediately, before experiments are defined
#     `--opt=value` is accepted for the options taking a value; the last occurrence wins.
#     A bad option, value, list entry or KEY prints one `runlib: ...` line and exits 2.
#   runlib_var NAME DEFAULT         NAME keeps its value when already set (override or environment),
#                                   else becomes DEFAULT; listed in --help. When a driver declares
#                                   variables, an override naming none of them gets a warning
#                                   (it still reaches the commands' environment).
#   runlib_add NAME OUT_DIR -- CMD [ARG...]   Register the next experiment (numbered from 1). The
#                                   command is stored word by word (never re-parsed by the shell).
#                                   Output folders must be unique.
#   runlib_will_execute             True when runlib_run will run commands (not --help/--dry-run);
#                                   use it to guard pre-flight checks such as missing weights.
#   runlib_run                      Print help, or the dry-run plan, or run the selection: skip
#                                   finished ones, `mkdir -p OUT`, remove a stale OUT/_FINISHED
#                                   (so a failed re-run never looks finished), run CMD with stdout+stderr
#                                   appended to OUT/train.log (after a header line), write
#                                   OUT/_FINISHED (`date '+%F %T'`, then the fingerprint, temp file
#                                   + mv) on success only, continue after failures, print a summary.
#                                   Returns 0, or 1 listing the failed experiments, or 2 (nothing
#                                   run) when a selected experiment's _FINISHED was written by another
#                                   command; make it the driver's last command so that this becomes
#                                   the exit status.
#   Fingerprint of an experiment: its command words and the driver's KEY=VALUE overrides (the last
#   value of each key). _FINISHED holds the date, `fingerprint sha256:<hex>`, then one `arg WORD` line
#   per (shell-quoted) command word and one `env KEY VALUE` line per override, from which a mismatch
#   names the differing flags.
#   Each command also sees RUNLIB_EXP_INDEX, RUNLIB_EXP_NAME and RUNLIB_EXP_OUT in its environment.
#   RUNLIB_DESCRIPTION (optional, set by the driver): text printed at the top of --help.
#   runlib_help_from_header SCRIPT ARGS...   For scripts without runlib options (demos, the weight
#                                   converter, set-up, tests): if an argument is -h or --help, print
#                                   SCRIPT's header comment as usage and exit 0 before anything runs.
#
# All state lives in RUNLIB_* globals; helpers are runlib_* (internal ones _runlib_*).

if [[ -n "${_RUNLIB_SOURCED:-}" ]]; then
    return 0
fi
_RUNLIB_SOURCED=1

RUNLIB_DESCRIPTION="${RUNLIB_DESCRIPTION:-}"
RUNLIB_PARSED=0
RUNLIB_START_FROM=1
RUNLIB_START_FROM_GIVEN=0
RUNLIB_RUN_COUNT=0
RUNLIB_RUN_COUNT_GIVEN=0
RUNLIB_RUN_SPECIFIC=""
RUNLIB_RUN_SPECIFIC_GIVEN=0
RUNLIB_SKIP_COMPLETED=1
RUNLIB_DRY_RUN=0
RUNLIB_HELP=0
RUNLIB_OVERRIDES=()     # "KEY=VALUE" as given, in order
RUNLIB_VAR_NAMES=()     # declared through runlib_var
RUNLIB_VAR_DEFAULTS=()
RUNLIB_NAMES=()         # one entry per experiment, index = number - 1
RUNLIB_OUTS=()
RUNLIB_CMD_START=()     # experiment i's command is RUNLIB_ARGV[start .. start+len-1]
RUNLIB_CMD_LEN=()
RUNLIB_ARGV=()
RUNLIB_SELECTED=()      # experiment numbers chosen by _runlib_select

_runlib_die() {  # usage error: one line on stderr, exit status 2
    printf 'runlib: %s\n' "$*" >&2
    exit 2
}

_runlib_warn() {
    printf 'runlib: warning: %s\n' "$*" >&2
}

_runlib_caller() {  # "file:line" of the driver line that called the public function
    printf '%s:%s' "${BASH_SOURCE[2]:-?}" "${BASH_LINENO[1]:-?}"
}

# Shell-quote words so the printed command can be pasted back into a shell; plain words stay bare.
_runlib_quote() {
    local out="" w
    for w in "$@"; do
        if [[ -n "$w" && "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
            out+="$w "
        else
            out+="${w@Q} "
        fi
    done
    printf '%s' "${out% }"
}

# Decimal value of a digits-only string (leading zeros would otherwise mean octal in $(( ))).
_runlib_int() {
    printf '%d' "$((10#$1))"
}

_runlib_check_uint() {  # FLAG VALUE MIN: a plain integer >= MIN, at most 9 digits
    local flag="$1" value="$2" min="$3" what="a non-negative integer"
    [[ "$min" == 1 ]] && what="a positive integer"
    if [[ ! "$value" =~ ^[0-9]{1,9}$ ]] || (( 10#$value < min )); then
        _runlib_die "$flag: expected $what, got '$value'"
    fi
}

# Validate a --run-specific LIST; print "lo hi" per entry. Dies on the first malformed entry.
_runlib_parse_list() {
    local list="$1" rest="$1," entry lo hi
    while [[ -n "$rest" ]]; do
        entry="${rest%%,*}"
        rest="${rest#*,}"
        if [[ "$entry" =~ ^([0-9]{1,9})$ ]]; then
            lo="${BASH_REMATCH[1]}"
            hi="$lo"
        elif [[ "$entry" =~ ^([0-9]{1,9})-([0-9]{1,9})$ ]]; then
            lo="${BASH_REMATCH[1]}"
            hi="${BASH_REMATCH[2]}"
        else
            _runlib_die "--run-specific: malformed entry '$entry' in '$list' (use N or A-B, e.g. 1,3-5)"
        fi
        lo="$(_runlib_int "$lo")"
        hi="$(_runlib_int "$hi")"
        if (( lo < 1 )); then
            _runlib_die "--run-specific: malformed entry '$entry' in '$list' (experiments are numbered from 1)"
        fi
        if (( lo > hi )); then
            _runlib_die "--run-specific: malformed entry '$entry' in '$list' (range start exceeds its end)"
        fi
        printf '%d %d\n' "$lo" "$hi"
    done
}

runlib_parse_args() {
    RUNLIB_PARSED=1
    # Locals are prefixed so that an override such as value=3 cannot land in a local variable.
    local _rl_arg _rl_opt _rl_value _rl_key
    while (( $# > 0 )); do
        _rl_arg="$1"
        shift
        case "$_rl_arg" in
            --start-from|--run-specific|--run-count|--start-from=*|--run-specific=*|--run-count=*)
                if [[ "$_rl_arg" == *=* ]]; then
                    _rl_opt="${_rl_arg%%=*}"
                    _rl_value="${_rl_arg#*=}"
                else
                    _rl_opt="$_rl_arg"
                    (( $# > 0 )) || _runlib_die "$_rl_opt: missing value"
                    _rl_value="$1"
                    shift
                fi
                case "$_rl_opt" in
                    --start-from)
                        _runlib_check_uint "$_rl_opt" "$_rl_value" 1
                        RUNLIB_START_FROM="$(_runlib_int "$_rl_value")"
                        RUNLIB_START_FROM_GIVEN=1
                        ;;
                    --run-count)
                        _runlib_check_uint "$_rl_opt" "$_rl_value" 0
                        RUNLIB_RUN_COUNT="$(_runlib_int "$_rl_value")"
                        RUNLIB_RUN_COUNT_GIVEN=1
                        ;;
                    --run-specific)
                        # Validate now (syntax needs no experiment count); expand in runlib_run.
                        # Not in $( ): _runlib_die must exit the driver, not a subshell.
                        _runlib_parse_list "$_rl_value" >/dev/null
                        RUNLIB_RUN_SPECIFIC="$_rl_value"
                        RUNLIB_RUN_SPECIFIC_GIVEN=1
                        ;;
                esac
                ;;
            --skip-completed) RUNLIB_SKIP_COMPLETED=1 ;;
            --no-skip-completed|--overwrite) RUNLIB_SKIP_COMPLETED=0 ;;
            --dry-run) RUNLIB_DRY_RUN=1 ;;
            -h|--help) RUNLIB_HELP=1 ;;
            -*)
                _runlib_die "unknown option '$_rl_arg' (see --help)"
                ;;
            *=*)
                _rl_key="${_rl_arg%%=*}"
                _rl_value="${_rl_arg#*=}"
                if [[ ! "$_rl_key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
                    _runlib_die "invalid override '$_rl_arg': '$_rl_key' is not a valid variable name"
                fi
                if [[ "$_rl_key" == RUNLIB_* || "$_rl_key" == _RUNLIB_* || "$_rl_key" == _rl_* ]]; then
                    _runlib_die "invalid override '$_rl_arg': names starting with RUNLIB_, _RUNLIB_ or _rl_ are reserved for runlib"
                fi
                if [[ "$(declare -p "$_rl_key" 2>/dev/null)" =~ ^declare\ -[a-zA-Z]*r ]]; then
                    _runlib_die "invalid override '$_rl_arg': '$_rl_key' is a read-only shell variable"
                fi
                export "$_rl_key=$_rl_value"
                RUNLIB_OVERRIDES+=("$_rl_key=$_rl_value")
                ;;
            *)
                _runlib_die "unexpected argument '$_rl_arg' (options start with --, overrides are KEY=VALUE)"
                ;;
        esac
    done
}

runlib_var() {
    if (( $# != 2 )); then
        _runlib_die "runlib_var: expected NAME DEFAULT, got $# argument(s) at $(_runlib_caller)"
    fi
    local _rl_name="$1" _rl_default="$2"
    if [[ ! "$_rl_name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ || "$_rl_name" == RUNLIB_* || "$_rl_name" == _rl_* ]]; then
        _runlib_die "runlib_var: invalid variable name '$_rl_name' at $(_runlib_caller)"
    fi
    RUNLIB_VAR_NAMES+=("$_rl_name")
    RUNLIB_VAR_DEFAULTS+=("$_rl_default")
    if [[ -z "${!_rl_name+set}" ]]; then
        printf -v "$_rl_name" '%s' "$_rl_default"
    fi
}

runlib_add() {
    local where
    where="$(_runlib_caller)"
    if (( $# < 4 )) || [[ "$3" != "--" ]]; then
        _runlib_die "runlib_add: expected NAME OUT_DIR -- CMD [ARG...] at $where"
    fi
    local name="$1" out="$2" i
    shift 3
    [[ -n "$name" ]] || _runlib_die "runlib_add: empty experiment name at $where"
    [[ -n "$out" ]] || _runlib_die "runlib_add: empty output folder for '$name' at $where"
    for i in "${!RUNLIB_OUTS[@]}"; do
        if [[ "${RUNLIB_OUTS[i]}" == "$out" ]]; then
            _runlib_die "runlib_add: output folder '$out' of '$name' already used by experiment $((i + 1)) '${RUNLIB_NAMES[i]}' at $where"
        fi
    done
    RUNLIB_NAMES+=("$name")
    RUNLIB_OUTS+=("$out")
    RUNLIB_CMD_START+=("${#RUNLIB_ARGV[@]}")
    RUNLIB_CMD_LEN+=("$#")
    RUNLIB_ARGV+=("$@")
}

runlib_help_from_header() {
    local script="$1" a
    shift
    for a in "$@"; do
        if [[ "$a" == -h || "$a" == --help ]]; then
            printf 'Usage: bash %s\n\n' "$script"
            # the comment block after the shebang, without its leading "# "
            sed -n '2,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$script"
            exit 0
        fi
    done
}

runlib_will_execute() {
    (( RUNLIB_HELP == 0 && RUNLIB_DRY_RUN == 0 ))
}

_runlib_usage() {
    local total="${#RUNLIB_NAMES[@]}" i
    printf 'Usage: %s [options] [KEY=VALUE ...]\n' "$(basename -- "$0")"
    if [[ -n "$RUNLIB_DESCRIPTION" ]]; then
        printf '\n%s\n' "$RUNLIB_DESCRIPTION"
    fi
    cat <<'EOF'

Options:
  --start-from N         first experiment to run in sequential mode (default: 1)
  --run-specific LIST    run only these experiments, e.g. 1,3,5 or 2-6 or 1,3-5 (sorted,
                         de-duplicated; numbers above the last experiment are dropped with a
                         warning); --start-from and --run-count are then ignored
  --run-count N          select at most N experiments in sequential mode (default: 0 = all)
  --skip-completed       skip experiments whose output folder holds _FINISHED (default)
  --no-skip-completed    run them again
  --overwrite            the same as --no-skip-completed (a _FINISHED written by another
                         command stops the driver before any run unless one of them is given)
  --dry-run              print each selected experiment and its command; run nothing
  -h, --help             show this help and exit
  KEY=VALUE              export KEY before the experiments are defined (e.g. EPOCHS=1)
EOF
    if (( ${#RUNLIB_VAR_NAMES[@]} > 0 )); then
        printf '\nVariables (override with KEY=VALUE):\n'
        for i in "${!RUNLIB_VAR_NAMES[@]}"; do
            printf '  %s (default: %s)\n' "${RUNLIB_VAR_NAMES[i]}" "$(_runlib_quote "${RUNLIB_VAR_DEFAULTS[i]}")"
        done
    fi
    local width=4
    for i in "${!RUNLIB_NAMES[@]}"; do
        (( ${#RUNLIB_NAMES[i]} <= width )) || width="${#RUNLIB_NAMES[i]}"
    done
    printf '\nExperiments (%d):\n' "$total"
    printf '  %4s  %-*s  %s\n' "#" "$width" "name" "output folder"
    for i in "${!RUNLIB_NAMES[@]}"; do
        printf '  %4d  %-*s  %s\n' "$((i + 1))" "$width" "${RUNLIB_NAMES[i]}" "${RUNLIB_OUTS[i]}"
    done
}

# "lo hi" lines -> sorted, merged "a,b-c" text for messages.
_runlib_merge_ranges() {
    local -a parts=()
    local a b cur_lo=-1 cur_hi=-1
    while read -r a b; do
        [[ -n "$a" ]] || continue
        if (( cur_lo >= 0 && a <= cur_hi + 1 )); then
            (( b <= cur_hi )) || cur_hi="$b"
            continue
        fi
        if (( cur_lo >= 0 )); then
            if (( cur_lo == cur_hi )); then parts+=("$cur_lo"); else parts+=("$cur_lo-$cur_hi"); fi
        fi
        cur_lo="$a"
        cur_hi="$b"
    done <<<"$(printf '%s' "$1" | sort -n -k1,1 -k2,2)"
    if (( cur_lo == cur_hi )); then parts+=("$cur_lo"); else parts+=("$cur_lo-$cur_hi"); fi
    local IFS=,
    printf '%s' "${parts[*]}"
}

# Fill RUNLIB_SELECTED with the chosen experiment numbers (ascending).
_runlib_select() {
    local total="${#RUNLIB_NAMES[@]}" lo hi n
    RUNLIB_SELECTED=()
    if (( RUNLIB_RUN_SPECIFIC_GIVEN )); then
        if (( RUNLIB_START_FROM_GIVEN || RUNLIB_RUN_COUNT_GIVEN )); then
            local ignored=()
            (( RUNLIB_START_FROM_GIVEN )) && ignored+=("--start-from")
            (( RUNLIB_RUN_COUNT_GIVEN )) && ignored+=("--run-count")
            printf 'runlib: notice: --run-specific given; ignoring %s\n' "${ignored[*]}" >&2
        fi
        local -a chosen=()
        local entries dropped=""
        entries="$(_runlib_parse_list "$RUNLIB_RUN_SPECIFIC")"
        while read -r lo hi; do
            for (( n = lo; n <= hi && n <= total; n++ )); do
                chosen[n]=1
            done
            if (( hi > total )); then
                (( lo > total )) || lo=$((total + 1))
                dropped+="$lo $hi"$'\n'
            fi
        done <<<"$entries"
        # Indexed arrays expand in index order, which sorts and de-duplicates in one go.
        RUNLIB_SELECTED=("${!chosen[@]}")
        if [[ -n "$dropped" ]]; then
            _runlib_warn "--run-specific: dropping $(_runlib_merge_ranges "$dropped") (outside 1..$total)"
        fi
    else
        for (( n = RUNLIB_START_FROM; n <= total; n++ )); do
            if (( RUNLIB_RUN_COUNT > 0 && ${#RUNLIB_SELECTED[@]} >= RUNLIB_RUN_COUNT )); then
                break
            fi
            RUNLIB_SELECTED+=("$n")
        done
        if (( RUNLIB_START_FROM > total )); then
            _runlib_warn "--start-from $RUNLIB_START_FROM is beyond the last experiment ($total)"
        fi
    fi
}

_runlib_overrides_check() {  # warn about overrides that name no declared variable (likely typos)
    (( ${#RUNLIB_VAR_NAMES[@]} > 0 )) || return 0
    local kv key known
    for kv in "${RUNLIB_OVERRIDES[@]}"; do
        key="${kv%%=*}"
        known=0
        local v
        for v in "${RUNLIB_VAR_NAMES[@]}"; do
            [[ "$v" == "$key" ]] && known=1
        done
        if (( ! known )); then
            _runlib_warn "override '$key' is not a variable of this driver (declared: ${RUNLIB_VAR_NAMES[*]}); it only reaches the commands' environment"
        fi
    done
}

# ---------------------------------------------------------------- fingerprints of finished runs

# The fingerprint lines of experiment index I (0-based): `arg WORD` per command word, `env KEY VALUE`
# per override (sorted by key, the last value of a key wins); words and values shell-quoted, one line each.
_runlib_fp_lines() {
    local i="$1" w k
    for w in "${RUNLIB_ARGV[@]:RUNLIB_CMD_START[i]:RUNLIB_CMD_LEN[i]}"; do
        printf 'arg %s\n' "$(_runlib_quote "$w")"
    done
    local -A last=()
    for w in "${RUNLIB_OVERRIDES[@]}"; do
        last["${w%%=*}"]="${w#*=}"
    done
    (( ${#last[@]} > 0 )) || return 0
    # keys are shell identifiers (checked when parsed): safe to split
    for k in $(printf '%s\n' "${!last[@]}" | LC_ALL=C sort); do
        printf 'env %s %s\n' "$k" "$(_runlib_quote "${last[$k]}")"
    done
}

_runlib_fp_digest() {  # fingerprint lines on stdin -> sha256:<hex>
    local sum
    sum="$(sha256sum)"
    printf 'sha256:%s' "${sum%% *}"
}

# Fill the associative array named $1 with flag -> value from fingerprint lines on stdin: `--k=v` and
# `--k v...` (the words up to the next flag; "(set)" for none), positional words as "word N", overrides as
# "env KEY". Lines other than arg/env (the date, the fingerprint) are ignored.
_runlib_fp_map() {
    local -n _rl_map="$1"
    local line kind word key="" value="" n=0 bare
    while IFS= read -r line; do
        kind="${line%% *}"
        word="${line#* }"
        if [[ "$kind" == env ]]; then
            _rl_map["env ${word%% *}"]="${word#* }"
            continue
        fi
        [[ "$kind" == arg ]] || continue
        n=$((n + 1))
        bare="${word#\'}"
        bare="${bare#\$\'}"
        if [[ "$bare" == -* ]]; then
            if [[ -n "$key" ]]; then _rl_map["$key"]="${value:-(set)}"; fi
            key="" value=""
            if [[ "$bare" == *=* ]]; then
                _rl_map["${bare%%=*}"]="${word#*=}"
            else
                key="$word"
            fi
        elif [[ -n "$key" ]]; then
            value+="${value:+ }$word"
        else
            _rl_map["word $n"]="$word"
        fi
    done
    if [[ -n "$key" ]]; then _rl_map["$key"]="${value:-(set)}"; fi
}

# "flag old -> new; ..." between the fingerprint lines in files $1 (old) and $2 (new), at most six.
_runlib_fp_diff() {
    local -A old=() new=()
    _runlib_fp_map old <"$1"
    _runlib_fp_map new <"$2"
    local -a diffs=()
    local k
    while IFS= read -r k; do
        [[ -n "$k" ]] || continue
        local a="${old[$k]-(not set)}" b="${new[$k]-(not set)}"
        if [[ "$a" != "$b" ]]; then
            (( ${#a} <= 60 )) || a="${a:0:57}..."
            (( ${#b} <= 60 )) || b="${b:0:57}..."
            diffs+=("$k $a -> $b")
        fi
    done <<<"$(printf '%s\n' "${!old[@]}" "${!new[@]}" | LC_ALL=C sort -u)"
    if (( ${#diffs[@]} == 0 )); then
        printf 'the same flags in another order'
        return 0
    fi
    local text="${diffs[0]}" j
    for (( j = 1; j < ${#diffs[@]} && j < 6; j++ )); do
        text+="; ${diffs[j]}"
    done
    (( ${#diffs[@]} <= 6 )) || text+=" (and $(( ${#diffs[@]} - 6 )) more)"
    printf '%s' "$text"
}

# State of experiment index I's _FINISHED: sets _RUNLIB_MARK to none | same | nofp | other, and for
# nofp/other _RUNLIB_MARK_WHY to the reason.
_runlib_marker_state() {
    local i="$1" marker="${RUNLIB_OUTS[$1]}/_FINISHED" recorded current new_lines
    _RUNLIB_MARK=none
    _RUNLIB_MARK_WHY=""
    [[ -e "$marker" ]] || return 0
    new_lines="$(_runlib_fp_lines "$i")"
    current="$(printf '%s\n' "$new_lines" | _runlib_fp_digest)"
    recorded="$(sed -n 's/^fingerprint //p' -- "$marker" 2>/dev/null | head -n 1)"
    if [[ -z "$recorded" ]]; then
        _RUNLIB_MARK=nofp
        _RUNLIB_MARK_WHY="$marker has no fingerprint (written before runlib recorded one), so it cannot be checked against this command"
    elif [[ "$recorded" == "$current" ]]; then
        _RUNLIB_MARK=same
    else
        _RUNLIB_MARK=other
        local tmp
        tmp="$(mktemp)"
        printf '%s\n' "$new_lines" >"$tmp"
        _RUNLIB_MARK_WHY="$marker was written by another command ($(_runlib_fp_diff "$marker" "$tmp"))"
        rm -f -- "$tmp"
    fi
}

# Run experiment N; prints nothing on success, sets _RUNLIB_STATUS to a failure reason otherwise.
_runlib_exec_one() {
    local n="$1" total="$2"
    local i=$((n - 1))
    local name="${RUNLIB_NAMES[i]}" out="${RUNLIB_OUTS[i]}"
    local -a cmd=("${RUNLIB_ARGV[@]:RUNLIB_CMD_START[i]:RUNLIB_CMD_LEN[i]}")
    local log="$out/train.log" marker="$out/_FINISHED" tmp rc_cmd rc_tee errexit=0
    _RUNLIB_STATUS=""
    if ! mkdir -p -- "$out"; then
        _RUNLIB_STATUS="cannot create output folder '$out'"
        return 0
    fi
    # A re-run must not leave an older success marker behind if it fails.
    if ! rm -f -- "$marker"; then
        _RUNLIB_STATUS="cannot remove old '$marker'"
        return 0
    fi
    local header
    header="==== runlib $(date '+%F %T') [$n/$total] $name: $(_runlib_quote "${cmd[@]}")"
    if (( ${#RUNLIB_OVERRIDES[@]} > 0 )); then
        header+=" (overrides: $(_runlib_quote "${RUNLIB_OVERRIDES[@]}"))"
    fi
    if ! printf '%s ====\n' "$header" >>"$log"; then
        _RUNLIB_STATUS="cannot write '$log'"
        return 0
    fi
    # errexit would abort the driver on the first failing pipeline; the status is read from
    # PIPESTATUS instead, so the command's own exit code survives tee.
    [[ "$-" == *e* ]] && errexit=1
    set +e
    RUNLIB_EXP_INDEX="$n" RUNLIB_EXP_NAME="$name" RUNLIB_EXP_OUT="$out" "${cmd[@]}" 2>&1 | tee -a -- "$log"
    local -a ps=("${PIPESTATUS[@]}")
    (( errexit )) && set -e
    rc_cmd="${ps[0]}"
    rc_tee="${ps[1]:-0}"
    if (( rc_cmd != 0 )); then
        _RUNLIB_STATUS="exit status $rc_cmd"
        return 0
    fi
    if (( rc_tee != 0 )); then
        _RUNLIB_STATUS="tee into '$log' failed with status $rc_tee"
        return 0
    fi
    tmp="$out/._FINISHED.tmp.$$"
    local fp_lines
    fp_lines="$(_runlib_fp_lines "$i")"
    if ! { { date '+%F %T' && printf 'fingerprint %s\n' "$(printf '%s\n' "$fp_lines" | _runlib_fp_digest)" &&
             printf '%s\n' "$fp_lines"; } >"$tmp" && mv -f -- "$tmp" "$marker"; }; then
        rm -f -- "$tmp"
        _RUNLIB_STATUS="cannot write '$marker'"
    fi
    return 0
}

runlib_run() {
    if (( ! RUNLIB_PARSED )); then
        _runlib_die "runlib_run: call runlib_parse_args \"\$@\" first (at $(_runlib_caller))"
    fi
    local total="${#RUNLIB_NAMES[@]}"
    if (( total == 0 )); then
        _runlib_die "runlib_run: no experiments registered; call runlib_add before runlib_run (at $(_runlib_caller))"
    fi
    if (( RUNLIB_HELP )); then
        _runlib_usage
        return 0
    fi
    _runlib_overrides_check
    _runlib_select
    if (( ${#RUNLIB_SELECTED[@]} == 0 )); then
        _runlib_warn "no experiment selected (of $total)"
        return 0
    fi
    local n i name out
    if (( RUNLIB_DRY_RUN )); then
        printf 'runlib: dry run: %d of %d experiments selected; nothing is run\n' "${#RUNLIB_SELECTED[@]}" "$total"
        if (( ${#RUNLIB_OVERRIDES[@]} > 0 )); then
            printf 'runlib: overrides: %s\n' "$(_runlib_quote "${RUNLIB_OVERRIDES[@]}")"
        fi
        for n in "${RUNLIB_SELECTED[@]}"; do
            i=$((n - 1))
            out="${RUNLIB_OUTS[i]}"
            local state=""
            _runlib_marker_state "$i"
            if [[ "$_RUNLIB_MARK" != none ]]; then
                if (( ! RUNLIB_SKIP_COMPLETED )); then
                    state=" (finished: would run again)"
                elif [[ "$_RUNLIB_MARK" == same ]]; then
                    state=" (finished: would be skipped)"
                elif [[ "$_RUNLIB_MARK" == nofp ]]; then
                    state=" (finished without a fingerprint: the driver would stop; --overwrite runs it again)"
                else
                    state=" (finished by another command: the driver would stop; --overwrite runs it again)"
                fi
            fi
            printf '[%d/%d] %s%s\n' "$n" "$total" "${RUNLIB_NAMES[i]}" "$state"
            printf '    out: %s\n' "$out"
            printf '    cmd: %s\n' "$(_runlib_quote "${RUNLIB_ARGV[@]:RUNLIB_CMD_START[i]:RUNLIB_CMD_LEN[i]}")"
        done
        return 0
    fi
    # before any run: a finished experiment is skipped only when its _FINISHED records this command
    if (( RUNLIB_SKIP_COMPLETED )); then
        local stale=0
        for n in "${RUNLIB_SELECTED[@]}"; do
            i=$((n - 1))
            _runlib_marker_state "$i"
            if [[ "$_RUNLIB_MARK" == nofp || "$_RUNLIB_MARK" == other ]]; then
                printf 'runlib: error: [%d/%d] %s: %s; it is not skipped: pass --overwrite to run it again, or give it another output folder\n' \
                    "$n" "$total" "${RUNLIB_NAMES[i]}" "$_RUNLIB_MARK_WHY" >&2
                stale=$((stale + 1))
            fi
        done
        if (( stale > 0 )); then
            return 2
        fi
    fi
    local ran=0 skipped=0 ok=0
    local -a failed=()
    for n in "${RUNLIB_SELECTED[@]}"; do
        i=$((n - 1))
        name="${RUNLIB_NAMES[i]}"
        out="${RUNLIB_OUTS[i]}"
        if (( RUNLIB_SKIP_COMPLETED )) && [[ -e "$out/_FINISHED" ]]; then
            printf 'runlib: [%d/%d] %s: skipped, finished %s\n' "$n" "$total" "$name" "$(head -n 1 -- "$out/_FINISHED" 2>/dev/null)"
            skipped=$((skipped + 1))
            continue
        fi
        printf 'runlib: [%d/%d] %s: running, log %s\n' "$n" "$total" "$name" "$out/train.log"
        ran=$((ran + 1))
        _runlib_exec_one "$n" "$total"
        if [[ -z "$_RUNLIB_STATUS" ]]; then
            ok=$((ok + 1))
            printf 'runlib: [%d/%d] %s: finished\n' "$n" "$total" "$name"
        else
            failed+=("$n $name ($_RUNLIB_STATUS)")
            printf 'runlib: [%d/%d] %s: FAILED: %s; continuing\n' "$n" "$total" "$name" "$_RUNLIB_STATUS" >&2
        fi
    done
    printf 'runlib: summary: selected %d, ran %d (succeeded %d, failed %d), skipped %d\n' \
        "${#RUNLIB_SELECTED[@]}" "$ran" "$ok" "${#failed[@]}" "$skipped"
    if (( ${#failed[@]} > 0 )); then
        local joined
        joined="$(IFS=';'; printf '%s' "${failed[*]}")"
        printf 'runlib: failed experiments: %s\n' "${joined//;/; }" >&2
        return 1
    fi
    return 0
}
