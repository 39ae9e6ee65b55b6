"""The `recipe` command line.  Imports stay light: nothing here (nor in the
engine modules it loads) imports torch; stages import heavy libraries only
when they run."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .apps.generation import Sampling, TextGenerator
    from .apps.models import ModelSource
    from .planning import PlanItem
    from .recipe import Recipe
    from .runner import Runner, RunResult
    from .shared_cache import SharedCache

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Build language models from declarative YAML recipes.\n\n"
    "recipe run RECIPE runs its stages with content-addressed caching; "
    "re-running resumes where it stopped.",
)

EXIT_OK, EXIT_STAGE_FAILED, EXIT_INVALID = 0, 1, 2

RecipeArg = typer.Argument(..., help="path to a recipe YAML (or the name of a bundled example, see `recipe ls`)")
SetOpt = typer.Option(None, "--set", help="override a value: KEY.PATH=VALUE (VALUE parsed as YAML); repeatable")
WorkdirOpt = typer.Option(Path("runs"), "--workdir", help="where run directories live")


CacheOpt = typer.Option(
    None,
    "--cache",
    help="shared stage cache: a directory, file:// or s3://bucket/prefix (also RECIPE_CACHE, or cache: in the recipe)",
)

TrustOpt = typer.Option(
    False,
    "--trust-code",
    help="allow the recipe to run code it names (task directories with Python, trust_remote_code); "
    "also RECIPE_TRUST_CODE=1",
)


def _shared_cache(url: str | None, r: Recipe) -> SharedCache | None:
    import os

    from .shared_cache import SharedCache

    url = url or os.environ.get("RECIPE_CACHE") or r.cache
    return SharedCache(url) if url else None


def _trusted(flag: bool) -> bool:
    import os

    return flag or os.environ.get("RECIPE_TRUST_CODE", "").lower() in ("1", "true", "yes")


def _load(recipe: str, overrides: list[str] | None, trust_code: bool = True) -> Recipe:
    """The validated recipe, or exit 2 with its problems.  Only `run` and
    `validate` check ``trust_code``: the other commands run nothing."""
    from .errors import RecipeError
    from .recipe import load_recipe

    try:
        return load_recipe(_recipe_path(recipe), overrides or [], trust_code=trust_code)
    except RecipeError as e:
        typer.echo(e.format(), err=True)
        raise typer.Exit(EXIT_INVALID) from None
    except Exception as e:  # a recipe the checks did not foresee: still a recipe problem, never a traceback
        typer.echo(f"1 problem in recipe:\n  {recipe}: cannot load it: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None


def _recipe_path(recipe: str) -> Path:
    p = Path(recipe)
    if p.exists() or p.suffix in (".yaml", ".yml") or "/" in recipe:
        return p
    from .examples import example_path

    return example_path(recipe) or p


@app.command()
def run(
    recipe: str = RecipeArg,
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    from_: str | None = typer.Option(None, "--from", help="start at this stage (earlier ones must be cached)"),
    until: str | None = typer.Option(None, "--until", help="stop after this stage"),
    only: list[str] | None = typer.Option(None, "--only", help="run just this stage (repeatable)"),
    force: list[str] | None = typer.Option(
        None, "--force", help="re-run this stage (and what depends on it) even if cached"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, run nothing"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show debug logs and stage tracebacks"),
    trust_code: bool = TrustOpt,
    cache: str | None = CacheOpt,
) -> None:
    """Run a recipe's stages, reusing every cached stage and resuming interrupted ones."""
    from .console import detach, progress_sink, redact_logs, setup_logging
    from .errors import RunError
    from .planning import Selection
    from .planning import plan as make_plan
    from .runner import Runner

    setup_logging(verbose)
    r = _load(recipe, set_, _trusted(trust_code))
    redact_logs(r.secrets)
    if not verbose:
        detach()
    sel = Selection(from_, until, list(only or []), list(force or []))
    runner = Runner(
        r,
        workdir,
        progress_sink=progress_sink(),
        on_event=_print_event,
        shared_cache=_shared_cache(cache, r),
        quiet_libraries=not verbose,
    )
    try:
        if dry_run:
            _print_plan(make_plan(r, runner.store, sel, shared=runner.shared_cache), r.name)
            raise typer.Exit(EXIT_OK)
        result = runner.run(sel)
    except RunError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    except KeyboardInterrupt as e:
        typer.echo(f"stopped: {e}", err=True)
        raise typer.Exit(130) from None
    _print_run_end(runner, result, r.name, verbose)


def _print_run_end(runner: Runner, result: RunResult, name: str, verbose: bool) -> None:
    """The summary table, where things are, and for a failed stage what to do; exit 1 then."""
    from . import console
    from .console import summary_table

    console.stdout.print(summary_table(result.manifest, f"recipe {name}"))
    typer.echo(f"run directory: {runner.store.root}\nmanifest: {runner.store.manifest_path}")
    typer.echo(f"runner overhead: {result.runner_seconds:.2f}s (time outside the stages' own work)")
    if result.pushed and runner.shared_cache is not None:
        typer.echo(f"pushed to the shared cache {runner.shared_cache.url}: {', '.join(result.pushed)}")
    if not result.ok:
        typer.echo(f"stage '{result.failed_stage}' failed: {result.error}", err=True)
        log_file = runner.store.logs_dir / f"{result.failed_stage}.log"
        typer.echo(f"the full traceback is in {log_file}" + ("" if verbose else " (or run with -v)"), err=True)
        typer.echo(
            "fix the cause and run the same command again: finished stages are reused and "
            "the failed one resumes from its checkpoints.",
            err=True,
        )
        raise typer.Exit(EXIT_STAGE_FAILED)


def _print_event(event: str, data: dict[str, Any]) -> None:
    import logging

    item = data["item"]
    log = logging.getLogger("recipe_runner")
    if event == "start":
        log.info(
            "stage %s (%s): running [%s] fingerprint %s",
            item.stage.name,
            item.stage.type,
            item.reason,
            (item.fingerprint or "")[:12],
        )
    elif event == "cached":
        note = "" if item.reason == "cached" else f" [{item.reason}]"
        log.info("stage %s (%s): cached%s", item.stage.name, item.stage.type, note)
    elif event == "end":
        e = data["entry"]
        if e["status"] == "done":
            log.info("stage %s: done in %.1fs", item.stage.name, e.get("seconds") or 0)
        else:
            log.error("stage %s: %s", item.stage.name, e.get("error"))


def _print_plan(items: list[PlanItem], name: str) -> None:
    from rich.table import Table

    from .console import stdout

    t = Table(title=f"plan for {name}")
    for c in ("stage", "type", "action", "why", "fingerprint"):
        t.add_column(c)
    for it in items:
        colour = {"run": "yellow", "cached": "green", "skip": "dim"}[it.action]
        t.add_row(
            it.stage.name,
            it.stage.type,
            f"[{colour}]{it.action}[/]",
            it.reason,
            (it.fingerprint or "(after upstream)")[:16],
        )
    stdout.print(t)


@app.command()
def validate(recipe: str = RecipeArg, set_: list[str] | None = SetOpt, trust_code: bool = TrustOpt) -> None:
    """Check a recipe (schema, every stage's parameters, inputs between stages) without running anything."""
    r = _load(recipe, set_, _trusted(trust_code))
    typer.echo(f"{r.file}: ok ({len(r.stages)} stages: {', '.join(s.name for s in r.stages)})")


@app.command()
def plan(
    recipe: str = RecipeArg,
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    from_: str | None = typer.Option(None, "--from"),
    until: str | None = typer.Option(None, "--until"),
    only: list[str] | None = typer.Option(None, "--only"),
    force: list[str] | None = typer.Option(None, "--force"),
    as_json: bool = typer.Option(False, "--json"),
    cache: str | None = CacheOpt,
) -> None:
    """Show what `recipe run` would do and why (new / parameters changed / input changed / cached; with a
    shared cache, which stages the run would pull from it)."""
    from .errors import RunError
    from .plan_estimates import estimate_lines, stage_estimates
    from .planning import Selection
    from .planning import plan as make_plan
    from .store import RunStore

    r = _load(recipe, set_)
    try:
        sel = Selection(from_, until, list(only or []), list(force or []))
        items = make_plan(r, RunStore(workdir, r.name), sel, shared=_shared_cache(cache, r))
    except RunError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    estimates = stage_estimates(r, {i.stage.name for i in items if i.action != "skip"})
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "name": i.stage.name,
                        "type": i.stage.type,
                        "action": i.action,
                        "reason": i.reason,
                        "fingerprint": i.fingerprint,
                        **({"launch": estimates[i.stage.name]} if i.stage.name in estimates else {}),
                    }
                    for i in items
                ],
                indent=2,
            )
        )
    else:
        _print_plan(items, r.name)
        for name, entry in estimates.items():  # distributed stages: launch, memory per device, time per step
            typer.echo("\n".join(estimate_lines(name, entry)))


@app.command()
def show(
    recipe: str = RecipeArg,
    set_: list[str] | None = SetOpt,
    full: bool = typer.Option(False, "--full", help="also print every parameter's default"),
) -> None:
    """Print the fully resolved recipe (after extends, --set and ${vars})."""
    import yaml

    r = _load(recipe, set_)
    typer.echo(yaml.safe_dump(r.resolved_dict(full=full), sort_keys=False, allow_unicode=True, width=100))


@app.command()
def status(
    recipe: str = RecipeArg,
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    cache: str | None = CacheOpt,
) -> None:
    """State of each stage of a recipe's run directory: pending, running, done or failed (with a shared
    cache, also whether a stage not done here is in it: "shared" in --json)."""
    from .console import stdout, summary_table
    from .planning import IN_SHARED_CACHE
    from .planning import status as run_status
    from .store import RunStore

    r = _load(recipe, set_)
    st = run_status(r, RunStore(workdir, r.name), _shared_cache(cache, r))
    if as_json:
        typer.echo(json.dumps(st, indent=2, default=str))
    else:
        shown = [{"error": IN_SHARED_CACHE, **e} if e["shared"] and not e.get("error") else e for e in st["stages"]]
        stdout.print(summary_table({**st, "stages": shown}, f"{r.name}  ({st['run_dir']})"))


@app.command()
def verify(
    recipe: str = RecipeArg, set_: list[str] | None = SetOpt, workdir: Path = WorkdirOpt, cache: str | None = CacheOpt
) -> None:
    """Check every committed output of a recipe's run (and, with a shared cache, its entries for the
    recipe's current keys) against the recorded content digests; exit 1 naming each corrupt file, 0 when
    all are intact."""
    import time

    from .planning import verify_run

    r = _load(recipe, set_)
    t = time.perf_counter()
    shared = _shared_cache(cache, r)
    v = verify_run(r, workdir, shared)
    for p in v.problems:
        typer.echo(f"corrupt: {p}", err=True)
    n = len(v.problems)
    fix = "`recipe run --force STAGE` rebuilds one" + ("; a run replaces a corrupt shared entry" if shared else "")
    verdict = f"{n} corrupt file(s); {fix}" if n else "all intact"
    also = f" and {v.shared} entries of the shared cache {shared.url}" if shared else ""
    typer.echo(f"verified {v.checked} stage outputs{also} in {time.perf_counter() - t:.2f}s: {verdict}")
    raise typer.Exit(EXIT_STAGE_FAILED if n else EXIT_OK)


@app.command()
def submit(
    recipe: str = RecipeArg,
    nodes: int = typer.Option(..., "--nodes", min=1, help="nodes to allocate (launch.nodes of the run)"),
    gpus_per_node: int = typer.Option(
        ..., "--gpus-per-node", min=1, help="GPUs per node; every distributed stage runs one process per GPU"
    ),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition"),
    time_limit: str | None = typer.Option(None, "--time", help="wall-clock limit in Slurm syntax, e.g. 1-12:00:00"),
    account: str | None = typer.Option(None, "--account", help="Slurm account to charge"),
    cpus_per_node: int | None = typer.Option(
        None, "--cpus-per-node", min=1, help="CPUs per node (sbatch --cpus-per-task) [default: 4 per GPU]"
    ),
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    trust_code: bool = TrustOpt,
    cache: str | None = CacheOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the sbatch script, submit nothing"),
) -> None:
    """Run a recipe on a Slurm cluster: write an sbatch script that runs `recipe run` on the first of NODES
    nodes (its distributed stages start NODES x GPUS-PER-NODE processes through srun), submit it with sbatch
    and print the job id.  The work directory must be on a filesystem every node sees."""
    import shutil

    from .slurm import render_sbatch
    from .store import RunStore

    scale = [f"launch.nodes={nodes}", f"launch.processes={gpus_per_node}"]
    r = _load(recipe, [*(set_ or []), *scale], _trusted(trust_code))
    if not any(s.launch is not None for s in r.stages):
        typer.echo(f"warning: no stage of recipe {r.name} can run distributed: all run once, on one node", err=True)
    sbatch = shutil.which("sbatch")
    if sbatch is None and not dry_run:
        typer.echo("error: `sbatch` is not on PATH: run `recipe submit` where Slurm is installed (a login node), "
                   "or add --dry-run to print the script", err=True)  # fmt: skip
        raise typer.Exit(EXIT_INVALID)
    logs = RunStore(workdir, r.name).logs_dir
    run_options = [*(["--trust-code"] if _trusted(trust_code) else []), *(["--cache", cache] if cache else [])]
    script = render_sbatch(
        _recipe_path(recipe), job_name=f"recipe-{r.name}", nodes=nodes, gpus_per_node=gpus_per_node,
        workdir=workdir, logs_dir=logs, overrides=list(set_ or []), run_options=run_options, partition=partition,
        time=time_limit, account=account, cpus_per_node=cpus_per_node,
    )  # fmt: skip
    if dry_run:
        typer.echo(script, nl=False)
        return
    assert sbatch is not None
    _sbatch(sbatch, script, logs, f"{nodes} node(s) x {gpus_per_node} GPU(s)")


def _sbatch(sbatch: str, script: str, logs: Path, scale: str) -> None:
    import re
    import subprocess
    import time

    logs.mkdir(parents=True, exist_ok=True)  # Slurm cannot open --output in a missing directory
    path = logs / f"submit-{time.strftime('%Y%m%d-%H%M%S')}.sbatch"
    path.write_text(script)
    proc = subprocess.run([sbatch, str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        typer.echo(f"error: sbatch {path} failed (exit {proc.returncode}): {proc.stderr.strip()}", err=True)
        raise typer.Exit(EXIT_STAGE_FAILED)
    m = re.search(r"Submitted batch job (\d+)", proc.stdout) or re.match(r"\s*(\d+)", proc.stdout)
    if m is None:
        typer.echo(f"error: sbatch {path} printed no job id: {proc.stdout.strip()}", err=True)
        raise typer.Exit(EXIT_STAGE_FAILED)
    job = m.group(1)
    typer.echo(f"submitted Slurm job {job}: {scale}")
    typer.echo(f"script: {path}\noutput: {logs / f'slurm-{job}.out'}")


ModelTargetArg = typer.Argument(
    None,
    help="a recipe (its run's model; a path or the name of a bundled example), or a model directory, "
    "PEFT adapter directory or .gguf file",
    show_default=False,
)
StageSelectOpt = typer.Option(
    None,
    "--stage",
    help="the stage whose model to load, NAME or NAME.OUTPUT (default: the last stage whose model, adapter or "
    "GGUF file is built under the recipe's current parameters)",
)
ModelPathOpt = typer.Option(None, "--model", help="a model directory, PEFT adapter directory or .gguf file to load")
BaseOpt = typer.Option(
    None,
    "--base",
    help="an adapter's base model, a directory or hub id (default: the model the recipe bound to the adapter's "
    "stage, else adapter_config.json's base_model_name_or_path)",
)
DeviceOpt = typer.Option("auto", "--device", help="auto (cuda where visible, else cpu), cpu or cuda[:N]")
MaxNewTokensOpt = typer.Option(None, "--max-new-tokens", min=1, help="tokens to generate at most [chat: 256]")
TemperatureOpt = typer.Option(None, "--temperature", min=0.0, help="sampling temperature, 0 is greedy [chat: 0.7]")
TopPOpt = typer.Option(None, "--top-p", min=0.0, max=1.0, help="sample from this probability mass [chat: 0.9]")
TopKOpt = typer.Option(None, "--top-k", min=0, help="sample from the k most likely tokens, 0 is off [chat: 50]")
RepetitionPenaltyOpt = typer.Option(None, "--repetition-penalty", min=0.0, help="1.0 is off (the default)")
GreedyOpt = typer.Option(False, "--greedy", help="always take the most likely token (deterministic)")
SeedOpt = typer.Option(None, "--seed", help="seed the sampling once at the start (reproducible output)")


@contextmanager
def _usage_errors() -> Iterator[None]:
    """A chat or serve problem the user fixes (AppError): its message, exit 2."""
    from .apps.models import AppError

    try:
        yield
    except AppError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None


def _model_source(
    target: str | None,
    stage: str | None,
    model: Path | None,
    base: str | None,
    overrides: list[str] | None,
    workdir: Path,
) -> ModelSource:
    """The model a chat or serve command names: a path (``--model``, or the
    argument when it is a directory or .gguf file) or a recipe's built model."""
    import shlex

    from .apps.models import AppError, find_in_run, source_from_path

    path = model or (Path(target) if target and (Path(target).is_dir() or target.endswith(".gguf")) else None)
    if path is not None:
        if stage:
            raise AppError("--stage picks a stage of a recipe's run: leave it out when naming a model by path")
        return source_from_path(path, base)
    if target is None:
        raise AppError("name a recipe (recipe chat RECIPE) or a model (--model PATH)")
    run_args = [target, *(["--workdir", str(workdir)] if workdir != Path("runs") else [])]
    run_args += [arg for override in overrides or [] for arg in ("--set", override)]
    return find_in_run(_load(target, overrides), workdir, stage, shlex.join(run_args), base)


def _load_model(source: ModelSource, device: str) -> TextGenerator:
    from .apps.models import load_generator

    if source.note:
        typer.echo(f"note: {source.note}", err=True)
    typer.echo(f"loading {source.kind} {source.path}", err=True)
    import os
    import tempfile

    from .capture import library_output_to, summarize

    log_file = Path(tempfile.gettempdir()) / f"recipe-load-{os.getpid()}.log"
    try:
        with library_output_to(log_file) as captured:  # torchao / torch start-up warnings off the console
            return load_generator(source, device)
    finally:
        summary = summarize(captured, " recipe_runner.")
        if summary:
            typer.echo(f"{summary} went to {log_file}", err=True)


def _sampling(defaults: Sampling, greedy: bool, **options: Any) -> Sampling:
    """The command's sampling defaults with the options given on the command line."""
    return defaults.with_options(**options, greedy=greedy or None)


@app.command()
def chat(
    recipe: str | None = ModelTargetArg,
    stage: str | None = StageSelectOpt,
    model: Path | None = ModelPathOpt,
    base: str | None = BaseOpt,
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    device: str = DeviceOpt,
    max_new_tokens: int | None = MaxNewTokensOpt,
    temperature: float | None = TemperatureOpt,
    top_p: float | None = TopPOpt,
    top_k: int | None = TopKOpt,
    repetition_penalty: float | None = RepetitionPenaltyOpt,
    greedy: bool = GreedyOpt,
    seed: int | None = SeedOpt,
    system: str | None = typer.Option(None, "--system", help="a system prompt (models with a chat template)"),
) -> None:
    """Chat with a model the recipe built, or continue text with a base model (no chat template); the
    reply streams as it is generated.  Not on a terminal, each line of stdin is a prompt and stdout gets
    each reply on a line of its own.  /reset starts over, /exit quits."""
    from .apps.chat import chat_in_terminal
    from .apps.generation import Sampling

    with _usage_errors():
        generator = _load_model(_model_source(recipe, stage, model, base, set_, workdir), device)
    sampling = _sampling(
        Sampling(max_new_tokens=256, temperature=0.7, top_p=0.9, top_k=50),
        greedy,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
    raise typer.Exit(chat_in_terminal(generator, sampling, system))


@app.command()
def serve(
    recipe: str | None = ModelTargetArg,
    stage: str | None = StageSelectOpt,
    model: Path | None = ModelPathOpt,
    base: str | None = BaseOpt,
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    device: str = DeviceOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="port to listen on"),
    max_new_tokens: int | None = MaxNewTokensOpt,
    temperature: float | None = TemperatureOpt,
    top_p: float | None = TopPOpt,
    top_k: int | None = TopKOpt,
    repetition_penalty: float | None = RepetitionPenaltyOpt,
    greedy: bool = GreedyOpt,
    seed: int | None = SeedOpt,
) -> None:
    """Serve a model the recipe built over an OpenAI-compatible HTTP API: /v1/models, /v1/completions
    and /v1/chat/completions, streaming included; one generation at a time.  The sampling options are
    the defaults of requests that do not set their own (OpenAI's: temperature 1, top_p 1; 256 tokens)."""
    from .apps.generation import Sampling
    from .apps.serve import OpenAIService, require_server_stack
    from .apps.serve import serve as run_server

    with _usage_errors():
        require_server_stack()
        generator = _load_model(_model_source(recipe, stage, model, base, set_, workdir), device)
    defaults = _sampling(
        Sampling(),
        False,
        max_new_tokens=max_new_tokens,
        temperature=0.0 if greedy else temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=repetition_penalty,
    )
    if seed is not None:
        generator.reseed(seed)
    typer.echo(f"serving {generator.name} at http://{host}:{port}/v1", err=True)
    run_server(OpenAIService(generator, defaults), host, port)


cache_app = typer.Typer(help="The shared stage cache: list or garbage-collect its entries.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


@cache_app.command("ls")
def cache_ls(url: str = typer.Argument(..., help="the cache: a directory, file:// or s3://bucket/prefix")) -> None:
    """List the complete entries of a shared cache (oldest first)."""
    from .shared_cache import SharedCache

    for e in SharedCache(url).entries():
        typer.echo(f"{e['key'][:16]}  {e.get('stage', '?'):<20} {e.get('type', '?'):<10} {e.get('bytes', 0):>12,} B")


@cache_app.command("gc")
def cache_gc(
    url: str = typer.Argument(..., help="the cache: a directory, file:// or s3://bucket/prefix"),
    older_than_days: float | None = typer.Option(None, "--older-than-days", help="delete entries older than this"),
    max_gb: float | None = typer.Option(None, "--max-gb", help="then delete the oldest until the cache is this small"),
) -> None:
    """Delete old entries, then the oldest until the cache fits a size."""
    from .shared_cache import SharedCache

    removed = SharedCache(url).gc(
        older_than_s=older_than_days * 86400 if older_than_days is not None else None,
        max_bytes=int(max_gb * 1e9) if max_gb is not None else None,
    )
    typer.echo(f"removed {len(removed)} entries ({sum(e.get('bytes', 0) for e in removed):,} bytes)")


@app.command()
def report(
    recipe: str | None = typer.Argument(
        None, help="a recipe YAML or bundled example's name (its last run under --workdir), or a run directory"
    ),
    set_: list[str] | None = SetOpt,
    workdir: Path = WorkdirOpt,
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="the HTML file to write"),
    compare: tuple[str, str] | None = typer.Option(
        None,
        "--compare",
        metavar="RUN_A RUN_B",
        help="two runs side by side: run directories (WORKDIR/<recipe name>) or recipes",
    ),
) -> None:
    """Write one self-contained HTML page of what a run built: the recipe, a stage timeline, the lineage
    graph, training curves, data funnels, eval / judge / quantization tables and samples (or two runs compared)."""
    from .report import ReportError, RunReport, collect_recipe, collect_run, render_comparison, render_report

    def collect(target: str) -> RunReport:
        return collect_run(target) if Path(target).is_dir() else collect_recipe(_load(target, set_), workdir)

    if (recipe is None) == (compare is None):
        typer.echo("error: give a RECIPE (or run directory), or --compare RUN_A RUN_B", err=True)
        raise typer.Exit(EXIT_INVALID)
    try:
        page = (
            render_comparison(collect(compare[0]), collect(compare[1]))
            if compare
            else render_report(collect(recipe or ""))
        )
    except ReportError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    output.write_text(page, encoding="utf-8")
    typer.echo(f"wrote {output} ({len(page) // 1024} KiB, self-contained: open it in any browser, offline)")


@app.command()
def stages(name: str | None = typer.Argument(None, help="a stage type: print its parameters")) -> None:
    """List installed stage plugins, or one stage's parameters."""
    from rich.markup import escape
    from rich.table import Table

    from .console import stdout
    from .docs import params_rows
    from .registry import PluginError, default_registry

    reg = default_registry()
    if name is None:
        t = Table(title="stage plugins (entry-point group recipe_runner.stages)")
        for c in ("type", "version", "from", "description"):
            t.add_column(c, overflow="fold")
        for n in reg.names():
            try:
                d = reg.describe(n)
                alias = f" (alias of {d['canonical']})" if d["canonical"] != n else ""
                t.add_row(n, d["version"], d["distribution"], escape(d["description"] + alias))
            except PluginError as e:
                t.add_row(n, "?", "?", f"[red]{escape(str(e))}[/]")
        stdout.print(t)
        return
    try:
        cls = reg.load(name)
    except PluginError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    d = reg.describe(name)
    stdout.print(f"[bold]{name}[/] v{d['version']} from {escape(d['distribution'])}\n{escape(d['description'])}\n")
    p = cls.Params() if not any(f.is_required() for f in cls.Params.model_fields.values()) else None
    ins = cls.input_slots(p) if p is not None else cls.inputs
    outs = cls.output_slots(p) if p is not None else cls.outputs
    if ins:
        stdout.print(
            "inputs:  "
            + ", ".join(f"{k} ({' | '.join(v.kinds)}{', optional' if v.optional else ''})" for k, v in ins.items()),
            markup=False,
        )
    if outs:
        stdout.print("outputs: " + ", ".join(f"{k} ({v})" for k, v in outs.items()), markup=False)
    t = Table(title="parameters")
    for c in ("name", "type", "default", "description"):
        t.add_column(c, overflow="fold")
    for row in params_rows(cls.Params):
        t.add_row(*(escape(c) for c in row))
    stdout.print(t)


@app.command()
def schema(output: Path | None = typer.Option(None, "--output", "-o", help="write to this file")) -> None:
    """Print the JSON Schema of recipes, with every registered plugin's parameters."""
    from .docs import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2, sort_keys=True) + "\n"
    if output:
        output.write_text(text)
        typer.echo(f"wrote {output}")
    else:
        typer.echo(text, nl=False)


@app.command("new-stage")
def new_stage(
    name: str = typer.Argument(..., help="registry name of the new stage, e.g. my_filter"),
    dest: Path = typer.Option(Path("."), "--dir", help="create the package under this directory"),
) -> None:
    """Scaffold a stage plugin package: pyproject with the entry point, a parameter model, a test."""
    from .scaffold import scaffold

    try:
        root = scaffold(name, dest)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    typer.echo(f"created {root}\nnext: pip install -e {root} && pytest {root}")


@app.command("ls")
def ls() -> None:
    """List the example recipes bundled with recipe-runner."""
    from .examples import list_examples

    for name, desc in list_examples():
        typer.echo(f"{name:28s} {desc}")


@app.command("cp")
def cp(
    name: str = typer.Argument(..., help="example recipe name (see `recipe ls`)"),
    dest: Path = typer.Argument(Path("."), help="file or directory to copy it to"),
) -> None:
    """Copy a bundled example recipe (and any base it extends) out to edit it."""
    from .examples import copy_example

    try:
        written = copy_example(name, dest)
    except (FileNotFoundError, FileExistsError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_INVALID) from None
    for w in written:
        typer.echo(f"wrote {w}")


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # an unwritable work dir, a full disk: the tool's error, not a traceback
        where = f": {e.filename}" if e.filename else ""
        typer.echo(f"error: {e.strerror or e}{where}", err=True)
        sys.exit(EXIT_INVALID)


if __name__ == "__main__":
    main()
