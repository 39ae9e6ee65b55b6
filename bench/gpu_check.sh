#!/usr/bin/env bash
# GPU proof of recipe-runner: run the recipes under recipes/gpu/ in the order that gives the most value
# first -- (a) TinySolar-248m bf16 pretraining with tokens/s, TFLOP/s and MFU, (b) QLoRA SFT, (c)
# bitsandbytes / GPTQ quantization, (d) DeepSpeed ZeRO-2 / FSDP, (e) with 2+ GPUs, the pretrain stage's
# scaling from 1 to N processes (bench/gpu_scaling.py) -- each within a time budget, skipping to
# the next on failure, and print one summary line per recipe (JSON lines in $OUT/gpu_check.jsonl, else
# runs/gpu_check/gpu_check.jsonl).  docs/gpu.md says how to run it on a GPU machine.
#
#   bench/gpu_check.sh                              # a GPU machine: a, b, c, d
#   bench/gpu_check.sh --only a,b --wheels .whl/ab  # install what is missing from a wheel folder first
#   bench/gpu_check.sh --smoke                      # the same recipes shrunk to CPU size (CI)
#   bench/gpu_check.sh --env-only --only a,b        # report the environment and what is missing; run nothing
#
# Options read here (the rest go to bench/gpu_check.py: --smoke --only --budget-s --peak-tflops --out
# --workdir --fresh --set --quiet; see `python bench/gpu_check.py --help`):
#   --wheels DIR   a folder of prebuilt wheels: `pip install --no-index --find-links DIR` what is missing
#   --python PY    the interpreter to use (default: $GPU_CHECK_PYTHON, else python3 on PATH)
#   --deps SET     'runtime' (the default: the dependencies these recipes import, all but lm-eval,
#                  datatrove and datasketch; see bench/gpu_env.py) or 'full' (all of pyproject.toml's)
#   --no-install   never install anything (the default when the project is installed and no --wheels)
#   --env-only     print the environment report and the missing requirements, then stop (with $OUT set,
#                  also write $OUT/installed.json for bench/gpu_wheels.py --have)
#   --install-only install (from --wheels), report what is still missing, then stop: one part of a wheel
#                  folder too large for one transfer per call
#
# No registry is needed: the project goes in with `pip install --no-deps -e .`, everything else from the
# wheel folder; the torch and transformers already on the machine are used when their versions satisfy
# the project's.  Outside a virtualenv the install goes into build/gpu_check_venv, created with
# --system-site-packages so it sees the machine's torch.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

py="${GPU_CHECK_PYTHON:-}"
wheels=""
deps="runtime"
install="auto"
env_only=0
install_only=0
only="a,b,c,d"
pass=()
while (($#)); do
    case "$1" in
    --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
    --wheels=*) wheels="${1#*=}"; shift ;;
    --python) py="${2:?--python needs an interpreter}"; shift 2 ;;
    --python=*) py="${1#*=}"; shift ;;
    --deps) deps="${2:?--deps needs runtime or full}"; shift 2 ;;
    --deps=*) deps="${1#*=}"; shift ;;
    --no-install) install="no"; shift ;;
    --env-only) env_only=1; shift ;;
    --install-only) install_only=1; install="yes"; shift ;;
    --only) only="${2:?--only needs a list}"; pass+=("$1" "$2"); shift 2 ;;
    --only=*) only="${1#*=}"; pass+=("$1"); shift ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) pass+=("$1"); shift ;;
    esac
done
if [[ -n "$wheels" && ! -d "$wheels" ]]; then
    echo "gpu_check: --wheels $wheels is not a folder" >&2
    exit 2
fi
py="${py:-$(command -v python3 || command -v python)}"
if [[ -z "$py" ]]; then
    echo "gpu_check: no python3 on PATH (use --python)" >&2
    exit 2
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TOKENIZERS_PARALLELISM=false

echo "gpu_check: python $py"
"$py" bench/gpu_env.py report || exit 2

have_project() { "$1" -c 'import recipe_runner, recipe_runner_stages' >/dev/null 2>&1; }

if [[ "$install" == auto ]] && { [[ -n "$wheels" ]] || ! have_project "$py"; }; then
    install="yes"
fi
if ((env_only)); then
    echo "gpu_check: requirements not satisfied here ($deps set, recipes $only):"
    "$py" bench/gpu_env.py missing --only "$only" --set "$deps" --why | sed 's/^/  /'
    # what is installed, for bench/gpu_wheels.py --have (it leaves those out of the wheel folders)
    if [[ -n "${OUT:-}" ]]; then
        "$py" bench/gpu_env.py installed >"$OUT/installed.json" && echo "gpu_check: wrote $OUT/installed.json"
    fi
    exit 0
fi

if [[ "$install" == yes ]]; then
    # a virtualenv that sees the machine's packages (torch), unless we already are in one
    if ! "$py" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)'; then
        venv=build/gpu_check_venv
        if [[ -x "$venv/bin/python" ]] || "$py" -m venv --system-site-packages "$venv"; then
            py="$venv/bin/python"
            echo "gpu_check: installing into $venv (system site-packages visible)"
        else
            echo "gpu_check: cannot create a virtualenv; installing into $py itself"
            export PIP_BREAK_SYSTEM_PACKAGES=1
        fi
    fi
    pip_offline=(--no-index)
    [[ -n "$wheels" ]] && pip_offline+=(--find-links "$wheels")
    # the editable install builds with the environment's setuptools (no build isolation: no registry)
    if ! "$py" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
        "$py" -m pip install "${pip_offline[@]}" 'setuptools>=77' ||
            echo "gpu_check: setuptools>=77 is needed to install the project; put its wheel in the wheel folder"
    fi
    "$py" -m pip install --no-deps --no-build-isolation "${pip_offline[@]}" -e . ||
        echo "gpu_check: the project did not install (see above)"
    if [[ -n "$wheels" ]]; then
        # the folder's wheels for distributions missing here (or too old), without a resolver: the folder
        # was resolved for this machine (bench/gpu_wheels.py), and a part of a split folder installs alone
        mapfile -t carried < <("$py" bench/gpu_env.py wheels "$wheels" --only "$only" --set "$deps")
        if ((${#carried[@]})); then
            echo "gpu_check: installing ${#carried[@]} wheel(s) from $wheels"
            "$py" -m pip install --no-index --no-deps "${carried[@]}" || echo "gpu_check: some wheels did not install"
        fi
    fi
    mapfile -t missing < <("$py" bench/gpu_env.py missing --only "$only" --set "$deps")
    if ((${#missing[@]})); then
        if [[ -z "$wheels" ]]; then
            echo "gpu_check: no --wheels folder, so these stay missing: ${missing[*]}"
        elif ! "$py" -m pip install "${pip_offline[@]}" "${missing[@]}"; then
            # one missing wheel fails the whole set: install what can be installed, one at a time
            for req in "${missing[@]}"; do
                "$py" -m pip install "${pip_offline[@]}" "$req" >/dev/null 2>&1 ||
                    echo "gpu_check: could not install $req from $wheels"
            done
        fi
    fi
    left=$("$py" bench/gpu_env.py missing --only "$only" --set "$deps" --why)
    if [[ -n "$left" ]]; then
        echo "gpu_check: still missing (the stages that need these will fail):"
        while IFS= read -r line; do echo "  $line"; done <<<"$left"
    fi
fi

if ((install_only)); then
    exit 0
fi
if ! have_project "$py"; then
    echo "gpu_check: recipe-runner is not importable with $py; nothing to run" >&2
    exit 2
fi
"$py" bench/gpu_check.py "${pass[@]}"
rc=$?
# (e) multi-GPU scaling of the pretrain stage as `recipe run` launches it, where 2+ GPUs are at hand
ngpu=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null || echo 0)
if [[ " ${pass[*]} " != *" --smoke "* ]] && ((ngpu >= 2)) && [[ ",$only," == *",e,"* || "$only" == "a,b,c,d" ]]; then
    "$py" bench/gpu_scaling.py --out "${OUT:-runs/gpu_check}/gpu_check.jsonl" || rc=1
fi
exit $rc
