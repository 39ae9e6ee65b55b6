"""A quiet console: what libraries print while a stage runs goes to the stage's
log file, with one summary line on the console; -v shows everything."""

from __future__ import annotations

NOISY_HOOK = """
import os, sys, warnings
for i in range(40):
    print(f"Combined length of context ({i}) and target exceeds 128. Truncating", file=sys.stderr)
warnings.warn("torchao: cannot load the C++ extension")
print("a line on stdout")
os.write(2, b"written to fd 2 directly, as C code does\\n")
"""


def test_library_output_goes_to_the_stage_log(recipe_cli, write, tmp_path):
    hook = write(tmp_path / "noisy.py", NOISY_HOOK)
    recipe = write(tmp_path / "q.yaml", f"name: q\nstages:\n  - {{type: count, params: {{n: 2, hook: {hook}}}}}\n")
    wd = tmp_path / "runs"
    proc = recipe_cli("run", str(recipe), "--workdir", str(wd), "--trust-code")
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout + proc.stderr
    assert not [line for line in console.splitlines() if line.startswith("Combined length")]
    assert "torchao" not in console and "written to fd 2" not in console and "a line on stdout" not in console
    log = (wd / "q" / "logs" / "count.log").read_text()
    assert (
        sum(line.startswith("Combined length") for line in log.splitlines()) == 40
        and "torchao" in log
        and "written to fd 2 directly" in log
    )
    summary = [line for line in proc.stderr.splitlines() if "lines of library output" in line]
    assert len(summary) == 1 and "44 lines" in summary[0] and "most often, 40 x" in summary[0]

    verbose = recipe_cli("run", str(recipe), "--workdir", str(tmp_path / "v"), "--trust-code", "-v")
    assert verbose.returncode == 0 and verbose.stderr.count("Truncating") == 40
