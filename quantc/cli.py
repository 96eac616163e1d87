"""The ``quantc`` command line: maps options to pipeline calls and exit codes, nothing more.

Exit codes (SPEC §6): 0 done, 1 the input is invalid or the plan infeasible, 2 usage (bad flag,
missing file). Heavy imports stay inside the commands so ``quantc validate`` starts fast.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="quantc",
    help="A quantization-plan compiler for LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class Format(str, Enum):
    text = "text"
    json = "json"
    yaml = "yaml"


def _emit_data(data, fmt: Format) -> None:
    import json

    if fmt == Format.json:
        typer.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        from ruamel.yaml import YAML

        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        yaml.dump(data, sys.stdout)


def _print_diagnostics(diagnostics, sources, fmt: Format) -> None:
    from .diagnostics import render_text

    if not diagnostics or fmt != Format.text:
        return
    typer.echo(render_text(list(diagnostics), sources), err=True)


def _usage_error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _check_paths(config: Path, model: str) -> None:
    if not config.exists():
        _usage_error(f"config file not found: {config}")
    if not Path(model).exists():
        _usage_error(f"model not found: {model} (give a config.json, a folder holding one, a .safetensors file or an index.json)")


def _run(config: Path, model: str, gpu, tp, set_, tables, strict):
    from .pipeline import run_pipeline

    _check_paths(config, model)
    return run_pipeline(str(config), model, gpu=gpu, tp=tp, overrides=set_ or [], tables=tuple(tables or ()), strict=strict)


_MODEL = typer.Option(..., "--model", "-m", help="config.json (or its folder), .safetensors file or model.safetensors.index.json")
_GPU = typer.Option(None, "--gpu", help="shorthand for --set target.gpu=G")
_TP = typer.Option(None, "--tp", help="shorthand for --set target.tensor_parallel=N", min=1)
_SET = typer.Option(None, "--set", help="edit the merged config, e.g. --set moe.activation=mxfp8 (repeatable)")
_TABLES = typer.Option(None, "--tables", help="extra kernel-table folder(s) consulted before the shipped tables")
_STRICT = typer.Option(False, "--strict", help="treat warnings as errors")
_FORMAT = typer.Option(Format.text, "--format", "-f", help="output format")


@app.command()
def plan(
    config: Path = typer.Argument(..., help="quantc config (YAML, TOML or JSON)"),
    model: str = _MODEL,
    gpu: Optional[str] = _GPU,
    tp: Optional[int] = _TP,
    set_: Optional[List[str]] = _SET,
    tables: Optional[List[str]] = _TABLES,
    strict: bool = _STRICT,
    fmt: Format = _FORMAT,
    html: Optional[Path] = typer.Option(None, "--html", help="also write a picture of the plan as an HTML page"),
    modules: bool = typer.Option(False, "--modules", help="with --format json|yaml: also list every module's entry"),
):
    """Dry run: the resolved per-layer plan as a grouped table, a summary and the warnings."""
    from .report import plan_data, render_plan_text

    result = _run(config, model, gpu, tp, set_, tables, strict)
    _print_diagnostics(result.diagnostics, result.sources, fmt)
    if result.plan is None:
        if fmt != Format.text:
            _emit_data({"diagnostics": [d.to_dict() for d in result.diagnostics]}, fmt)
        raise typer.Exit(EXIT_INVALID)
    data = plan_data(result.plan, result.diagnostics, result.lowering.shapes)
    if modules:
        if fmt == Format.text:
            _usage_error("--modules lists every module in --format json or yaml")
        data["modules"] = [{"name": m.name, "kind": m.kind, "n": m.n, "k": m.k, "num_experts": m.num_experts,
                            "weight": m.weight, "activation": m.activation, "method": m.method, "kernel": m.kernel,
                            "provenance": m.provenance} for m in result.plan.modules]
    if fmt == Format.text:
        import shutil

        # a terminal gets its own width (the provenance column folds); files and pipes get 260 columns
        width = max(shutil.get_terminal_size((260, 24)).columns, 120) if sys.stdout.isatty() else 260
        typer.echo(render_plan_text(data, width=width))
    else:
        _emit_data(data, fmt)
    if html is not None:
        from .html import render_plan_html
        from .plan import write_atomic

        write_atomic(html, render_plan_html(result.plan))
    raise typer.Exit(EXIT_OK)


@app.command(name="compile")
def compile_(
    config: Path = typer.Argument(..., help="quantc config (YAML, TOML or JSON)"),
    model: str = _MODEL,
    output: Path = typer.Option(..., "--output", "-o", help="where to write the compiled plan (JSON)"),
    gpu: Optional[str] = _GPU,
    tp: Optional[int] = _TP,
    set_: Optional[List[str]] = _SET,
    tables: Optional[List[str]] = _TABLES,
    strict: bool = _STRICT,
):
    """Lower the config against the model and write the compiled plan (atomically)."""
    result = _run(config, model, gpu, tp, set_, tables, strict)
    _print_diagnostics(result.diagnostics, result.sources, Format.text)
    if result.plan is None:
        raise typer.Exit(EXIT_INVALID)
    if not output.parent.exists():
        _usage_error(f"output folder does not exist: {output.parent}")
    result.plan.save(output)
    s = result.plan.summary
    typer.echo(f"wrote {output}: {s['modules']} modules, {len(result.plan.kernels)} kernel shapes, "
               f"weights {s['bytes_before'] / 1e9:.2f} GB -> {s['bytes_after'] / 1e9:.2f} GB")
    raise typer.Exit(EXIT_OK)


@app.command()
def explain(
    config: Path = typer.Argument(..., help="quantc config (YAML, TOML or JSON)"),
    module: str = typer.Argument(..., help="full module name, e.g. model.layers.3.mlp.experts.7.down_proj"),
    model: str = _MODEL,
    gpu: Optional[str] = _GPU,
    tp: Optional[int] = _TP,
    set_: Optional[List[str]] = _SET,
    tables: Optional[List[str]] = _TABLES,
    strict: bool = _STRICT,
    fmt: Format = _FORMAT,
):
    """Why a module got what it got: each field's deciding rule, what it overrode, the kernel and the
    candidates rejected."""
    from .report import closest_module_names, explain_data, render_explain_text

    result = _run(config, model, gpu, tp, set_, tables, strict)
    if result.lowering is None:
        _print_diagnostics(result.diagnostics, result.sources, Format.text)
        raise typer.Exit(EXIT_INVALID)
    data = explain_data(result, module)
    if data is None:
        names = [m.name for m in result.inventory.modules]
        close = closest_module_names(names, module)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        typer.echo(f"error: QC814 no module named {module!r} in {result.inventory.source}{hint}", err=True)
        raise typer.Exit(EXIT_INVALID)
    if fmt == Format.text:
        typer.echo(render_explain_text(data))
    else:
        _emit_data(data, fmt)
    raise typer.Exit(EXIT_INVALID if data["errors"] else EXIT_OK)



@app.command()
def validate(
    files: List[Path] = typer.Argument(..., help="config file(s) to check (YAML, TOML or JSON)", exists=True,
                                       dir_okay=False, readable=True),
    fmt: Format = _FORMAT,
    strict: bool = _STRICT,
):
    """Check config files: every problem of every file, each at its file:line:col with a hint."""
    raise typer.Exit(_validate_files([str(f) for f in files], fmt.value, strict))


def _validate_files(files: list, fmt: str, strict: bool) -> int:
    from .diagnostics import REPORTERS, has_errors, promote_warnings
    from .validate import check_files

    diagnostics: list = []
    sources: dict = {}
    for _, config, diags in check_files(files):
        diagnostics.extend(promote_warnings(diags) if strict else diags)
        if config is not None:
            sources.update(config.sources)
        else:
            for d in diags:
                if d.span and d.span.file not in sources and d.span.line > 0:
                    sources[d.span.file] = _read_text(d.span.file)
    if fmt == "text":
        if diagnostics:
            typer.echo(REPORTERS["text"](diagnostics, sources))
        else:
            typer.echo(f"ok: {len(files)} file{'s' * (len(files) != 1)} valid")
    elif fmt == "json":
        typer.echo(REPORTERS["json"](diagnostics, sources))
    else:
        _emit_data([d.to_dict() for d in diagnostics], Format(fmt))
    return EXIT_INVALID if has_errors(diagnostics) else EXIT_OK


def _fast_validate(args: list) -> int | None:
    """``quantc validate`` without building the typer app (whose argument coercion imports pydantic,
    ~0.1 s). Only plain argument lists take this path; anything else (--help, an unknown flag, a
    missing file) returns None and goes through typer, which reports usage errors itself."""
    import os

    files, fmt, strict = [], "text", False
    it = iter(args)
    for arg in it:
        if arg == "--strict":
            strict = True
        elif arg in ("--format", "-f"):
            fmt = next(it, None)
            if fmt not in ("text", "json", "yaml"):
                return None
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
            if fmt not in ("text", "json", "yaml"):
                return None
        elif arg.startswith("-") or not os.path.isfile(arg):
            return None
        else:
            files.append(arg)
    return _validate_files(files, fmt, strict) if files else None


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(10 * 1024 * 1024)
    except (OSError, UnicodeDecodeError):
        return None


class SchemaName(str, Enum):
    config = "config"
    plan = "plan"
    kernels = "kernels"


@app.command()
def schema(name: SchemaName = typer.Argument(SchemaName.config, help="which schema to print")):
    """Print a JSON Schema: the config language, the compiled plan or the kernel tables."""
    from .schema import schema_path

    path = schema_path("quantc" if name == SchemaName.config else name.value)
    if path is None:
        typer.echo(f"error: the {name.value} schema is not installed ({name.value}.schema.json is missing "
                   "from quantc/_data/schemas and schemas/)", err=True)
        raise typer.Exit(EXIT_INVALID)
    with open(path, encoding="utf-8") as fh:
        typer.echo(fh.read(), nl=False)
    raise typer.Exit(EXIT_OK)


@app.command(name="import")
def import_(
    config: Path = typer.Argument(..., help="a checkpoint's config.json, hf_quant_config.json or its folder"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the quantc config here (default: stdout)"),
):
    """Turn a checkpoint's quantization_config into an equivalent quantc config (YAML)."""
    from .diagnostics import has_errors, render_text
    from .interop import import_quantization_config

    if not config.exists():
        _usage_error(f"checkpoint config not found: {config}")
    text, diags = import_quantization_config(config)
    if diags:
        typer.echo(render_text(list(diags)), err=True)
    if has_errors(diags):
        raise typer.Exit(EXIT_INVALID)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
    raise typer.Exit(EXIT_OK)


class ExportFormat(str, Enum):
    compressed_tensors = "compressed-tensors"
    vllm = "vllm"


@app.command()
def export(
    plan_file: Path = typer.Argument(..., help="a compiled plan (quantc compile -o), or JSON with a 'modules' list"),
    fmt: ExportFormat = typer.Option(ExportFormat.compressed_tensors, "--format", help="checkpoint format to write"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write the block here (default: stdout)"),
):
    """Write a plan's schemes as a checkpoint quantization_config block."""
    import json

    from .diagnostics import Diagnostic, QuantcError, Span, has_errors, render_text
    from .interop import export_config

    if not plan_file.exists():
        _usage_error(f"plan not found: {plan_file}")
    try:
        data = json.loads(plan_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        typer.echo(f"{plan_file}: error: cannot read JSON: {exc}", err=True)
        raise typer.Exit(EXIT_INVALID)
    try:
        if isinstance(data, dict) and data.get("format") == "quantc-plan":
            from .plan import load_plan

            source = load_plan(plan_file)
        elif isinstance(data, dict) and isinstance(data.get("modules"), list):
            source = [(m["name"], m["weight"], m.get("activation"), m.get("kind"), m.get("num_experts", 1))
                      for m in data["modules"]]
        else:
            raise QuantcError([Diagnostic("QC412", "error", "not a compiled plan nor a JSON object with a "
                                          "'modules' list", Span(str(plan_file)),
                                          "give the output of `quantc compile -o plan.json`")])
    except QuantcError as exc:
        typer.echo(render_text(list(exc.diagnostics)), err=True)
        raise typer.Exit(EXIT_INVALID)
    except (KeyError, TypeError) as exc:
        typer.echo(f"{plan_file}: error: QC412 malformed module entry: missing or bad field {exc}", err=True)
        raise typer.Exit(EXIT_INVALID)
    block, diags = export_config(source, fmt.value)
    if diags:
        typer.echo(render_text(list(diags)), err=True)
    if has_errors(diags):
        raise typer.Exit(EXIT_INVALID)
    text = json.dumps({"quantization_config": block}, indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
    raise typer.Exit(EXIT_OK)


def _default_tables_dir() -> Path:
    import os

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "quantc" / "kernels"


class TuneSpace(str, Enum):  # quantc.tune.SPACES
    full = "full"
    small = "small"
    seeded = "seeded"


@app.command()
def tune(
    config: Optional[Path] = typer.Argument(None, help="quantc config (or give --plan)"),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="model description, with CONFIG"),
    plan_file: Optional[Path] = typer.Option(None, "--plan", help="a compiled plan instead of CONFIG + --model"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="table folder (default: ~/.cache/quantc/kernels)"),
    gpu: Optional[str] = _GPU,
    tp: Optional[int] = _TP,
    set_: Optional[List[str]] = _SET,
    kernels: Optional[str] = typer.Option(None, "--kernels", help="comma-separated kernel ids to tune (default: every tunable kernel of the plan, MoE grouped GEMMs included)"),
    buckets: Optional[str] = typer.Option(None, "--m-buckets", help="comma-separated M-bucket bounds to tune, e.g. 1,16,64 (default: all)"),
    space: TuneSpace = typer.Option(TuneSpace.full, "--space", help="configs searched per job: full (the whole grid, "
                                    "minutes a job), small (a handful, for tests and the interpreter), seeded (about a "
                                    "dozen: the winners of tables tuned on nearby shapes, and the default)"),
    small: bool = typer.Option(False, "--small", help="the same as --space small"),
):
    """Benchmark Triton configs for the plan's kernels and (N, K) shapes per M-bucket on this GPU and
    write the winners as a kernel table (resumable; each entry written atomically)."""
    from .gpus import GPUS
    from .tune import M_BUCKETS, jobs_from_plan

    if small and space not in (TuneSpace.full, TuneSpace.small):
        _usage_error(f"--small is --space small; it cannot be combined with --space {space.value}")

    if plan_file is not None:
        from .plan import load_plan

        if not plan_file.exists():
            _usage_error(f"plan not found: {plan_file}")
        from .diagnostics import QuantcError

        try:
            plan_obj = load_plan(plan_file)
        except QuantcError as exc:
            _print_diagnostics(exc.diagnostics, {}, Format.text)
            raise typer.Exit(EXIT_INVALID)
    else:
        if config is None or model is None:
            _usage_error("give CONFIG and --model, or --plan")
        result = _run(config, model, gpu, tp, set_, None, False)
        _print_diagnostics(result.diagnostics, result.sources, Format.text)
        if result.plan is None:
            raise typer.Exit(EXIT_INVALID)
        plan_obj = result.plan
    wanted = None
    if buckets:
        try:
            wanted = {int(b) for b in buckets.split(",")}
        except ValueError:
            _usage_error(f"--m-buckets takes integers, got {buckets!r}")
    chosen = tuple(b for b in M_BUCKETS if wanted is None or b[0] in wanted or (b[0] == M_BUCKETS[-1][0] and b[1] in wanted))
    from .tune import TUNABLE

    wanted_kernels = set(kernels.split(",")) if kernels else None
    if wanted_kernels and wanted_kernels - TUNABLE:
        _usage_error(f"--kernels: not tunable kernel(s) {', '.join(sorted(wanted_kernels - TUNABLE))}; tunable: {', '.join(sorted(TUNABLE))}")
    from .tune import top_k_from_model

    # MoE jobs route each token to top_k experts: the model's config says how many, else the architecture
    jobs = jobs_from_plan(plan_obj, chosen, wanted_kernels, top_k=top_k_from_model(model) if model else None)
    try:
        from .runtime.tune import tune as run_tune
    except ImportError as exc:
        typer.echo(f"error: quantc tune needs the runtime (torch, triton): {exc}", err=True)
        raise typer.Exit(EXIT_USAGE)
    stats = run_tune(jobs, GPUS[plan_obj.target["gpu"]], output or _default_tables_dir(),
                     space="small" if small else space.value, progress=sys.stderr.isatty())
    typer.echo(f"tuned {stats['tuned']} of {stats['jobs']} (kernel, N, K, M-bucket) entries "
               f"({stats['skipped_done']} already done, {stats['no_valid_config']} without a valid config"
               f"{_disagree_note(stats)}) -> {stats['path']}")
    raise typer.Exit(EXIT_INVALID if stats["no_valid_config"] or stats.get("default_disagrees") else EXIT_OK)


def _disagree_note(stats: dict) -> str:
    n = stats.get("default_disagrees", 0)
    return f", {n} whose default config disagrees with the plain-torch reference" if n else ""


def main() -> None:
    try:  # newer typer vendors click as typer._click: its exceptions are not click's
        from typer import Abort
        from typer._click.exceptions import ClickException, UsageError
    except ImportError:
        from click.exceptions import Abort, ClickException, UsageError

    if sys.argv[1:2] == ["validate"]:
        code = _fast_validate(sys.argv[2:])
        if code is not None:
            sys.exit(code)
    try:
        rv = app(standalone_mode=False)
    except UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except (Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)
