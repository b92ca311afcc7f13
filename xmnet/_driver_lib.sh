# shellcheck shell=bash
# Shared part of the XMNet drivers (train_model_cls.sh, train_model_seg.sh, train_model_seg_unet3plus.sh).
#
# The original drivers take positional arguments: $1 experiment number, $2 backbone, $3 local-train
# flag (`true` or anything else). They are kept: `bash train_model_cls.sh 2 resnet50 true` runs case 2.
# On top, every shell/runlib.sh option works (--run-specific 1,3-5, --dry-run, --skip-completed, ...,
# KEY=VALUE). A positional experiment number N means `--run-specific N`. Without one, as the original,
# the driver exits 1 with an error, unless a runlib selection (--run-specific, --start-from,
# --run-count), --dry-run or --help says what to do.

XM_POSITIONALS=()
XM_RUNLIB_ARGS=()
XM_SELECTION_GIVEN=0   # --run-specific / --start-from / --run-count / --dry-run / --help seen

xm_split_args() {  # separate positionals from runlib options / KEY=VALUE overrides
    local a expect_value=0
    for a in "$@"; do
        if (( expect_value )); then
            XM_RUNLIB_ARGS+=("$a"); expect_value=0; continue
        fi
        case "$a" in
            --start-from|--run-specific|--run-count) XM_RUNLIB_ARGS+=("$a"); expect_value=1; XM_SELECTION_GIVEN=1 ;;
            --start-from=*|--run-specific=*|--run-count=*|--dry-run|-h|--help) XM_RUNLIB_ARGS+=("$a"); XM_SELECTION_GIVEN=1 ;;
            -*|*=*) XM_RUNLIB_ARGS+=("$a") ;;
            *) XM_POSITIONALS+=("$a") ;;
        esac
    done
    if (( ${#XM_POSITIONALS[@]} > 3 )); then
        echo "$(basename -- "$0"): at most 3 positional arguments (experiment number, backbone, local flag), got ${#XM_POSITIONALS[@]}" >&2
        exit 2
    fi
}

xm_select_case() {  # TOTAL: a positional case number N -> --run-specific N; none -> the original's error
    local total="$1"
    if (( ${#XM_POSITIONALS[@]} >= 1 )); then
        xm_check_case "${XM_POSITIONALS[0]}" "$total"
        XM_RUNLIB_ARGS=(--run-specific "$((10#${XM_POSITIONALS[0]}))" "${XM_RUNLIB_ARGS[@]}")
    elif (( ! XM_SELECTION_GIVEN )); then
        echo "No arguments provided. Please provide a case number between 1 and $total (or select cases with --run-specific / --start-from / --run-count; --dry-run lists them)" >&2
        exit 1
    fi
}

xm_check_case() {  # NUMBER TOTAL: the original's error for a number outside the cases (exit 1)
    local n="$1" total="$2"
    if [[ ! "$n" =~ ^[0-9]+$ ]] || (( 10#$n < 1 || 10#$n > total )); then
        echo "Invalid option: provide a number between 1 and $total (got '$n')" >&2
        exit 1
    fi
}

xm_drop_fsds_cases() {  # the UNet3+ original has its --fsds cases (the even numbers) commented out
    [[ "${FSDS:-0}" == 1 ]] && return 0
    (( RUNLIB_HELP )) && return 0
    local n dropped=() keep=()
    _runlib_select
    for n in "${RUNLIB_SELECTED[@]}"; do
        if (( n % 2 )); then keep+=("$n"); else dropped+=("$n"); fi
    done
    (( ${#dropped[@]} )) || return 0
    if (( ! ${#keep[@]} )); then
        echo "Invalid argument: case(s) $(IFS=,; echo "${dropped[*]}") (--fsds) are commented out in the original train_model_seg_unet3plus.sh; FSDS=1 runs them" >&2
        exit 1
    fi
    echo "train_model_seg_unet3plus.sh: skipping the --fsds case(s) $(IFS=,; echo "${dropped[*]}"), commented out in the original (FSDS=1 runs them)" >&2
    RUNLIB_RUN_SPECIFIC="$(IFS=,; echo "${keep[*]}")"
    RUNLIB_RUN_SPECIFIC_GIVEN=1 RUNLIB_START_FROM_GIVEN=0 RUNLIB_RUN_COUNT_GIVEN=0
}

xm_seg_cases() {  # SCRIPT OUT_PREFIX CMD...: the 12 segmentation cases (att_from 1-6, without / with --fsds)
    local script="$1" prefix="$2" att fsds name out
    shift 2
    local -a base=("$@") flags
    # shellcheck disable=SC2206
    local -a extra=($EXTRA_ARGS)
    for att in 1 2 3 4 5 6; do
        for fsds in 0 1; do
            name="att_from${att}"; flags=(--att_from "$att")
            if (( fsds )); then name+="_fsds"; flags+=(--fsds); fi
            out="$OUT_ROOT/$BACKBONE/${prefix}_$name"
            runlib_add "$name" "$out" -- "${base[@]}" "${flags[@]}" --output_dir "$out" "${extra[@]}"
        done
    done
    [[ "$script" == train_model_seg_unet3plus.sh ]] && xm_drop_fsds_cases
    if runlib_will_execute && [[ ! -f "$MODEL_PATH" ]]; then
        echo "$script: classification checkpoint not found: $MODEL_PATH (train one with train_model_cls.sh, then set MODEL_PATH=...)" >&2
        exit 1
    fi
}
