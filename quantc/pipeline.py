"""The whole compiler pipeline in one call: load + validate -> inventory -> checkpoint -> lower -> emit.

Used by the CLI and the Python API alike. Returns diagnostics instead of raising, so the CLI can print
every problem; ``quantc.compile`` raises ``QuantcError`` on errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import Config
from .diagnostics import Diagnostic, Span, has_errors, promote_warnings


@dataclass
class PipelineResult:
    config: Config | None = None
    inventory: object | None = None
    checkpoint: object | None = None
    lowering: object | None = None
    plan: object | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not has_errors(self.diagnostics)


def run_pipeline(
    config_or_path,
    model,
    *,
    gpu: str | None = None,
    tp: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    tables: tuple[str, ...] = (),
    strict: bool = False,
) -> PipelineResult:
    from .overrides import apply_overrides

    result = PipelineResult()
    if isinstance(config_or_path, Config):
        config, diags = config_or_path, ()
    else:
        from .validate import check_config

        config, diags = check_config(str(config_or_path))
    result.diagnostics.extend(diags)
    if config is None:
        return _finish(result, strict)
    result.sources.update(config.sources)
    assignments = list(overrides)
    if gpu is not None:
        assignments.append(f"target.gpu={gpu}")
    if tp is not None:
        assignments.append(f"target.tensor_parallel={tp}")
    config, kind_overrides, diags = apply_overrides(config, assignments)
    result.diagnostics.extend(diags)
    result.config = config

    inventory = _load_model(model, result)
    if inventory is None or has_errors(result.diagnostics):
        return _finish(result, strict)
    result.inventory = inventory

    checkpoint = None
    if inventory.quantization_config is not None:
        from .checkpoint import read_checkpoint_scheme

        checkpoint, diags = read_checkpoint_scheme(
            inventory.quantization_config, inventory.quantization_config_source or inventory.source, inventory
        )
        result.diagnostics.extend(diags)
        if checkpoint is None:
            return _finish(result, strict)
    result.checkpoint = checkpoint

    from .lower import lower

    lowered = lower(config, inventory, overrides=kind_overrides, checkpoint=checkpoint, tables_dirs=tuple(tables))
    result.lowering = lowered.lowering
    result.diagnostics.extend(lowered.diagnostics)
    result.plan = lowered.plan
    return _finish(result, strict)


def _load_model(model, result: PipelineResult):
    from .inventory import load_inventory

    try:
        inventory, diags = load_inventory(model)
    except RecursionError:
        inventory, diags = None, (Diagnostic("QC400", "error", "model description is nested too deeply", Span(str(model))),)
    result.diagnostics.extend(diags)
    return inventory


def _finish(result: PipelineResult, strict: bool) -> PipelineResult:
    if strict:
        result.diagnostics = list(promote_warnings(result.diagnostics))
        if has_errors(result.diagnostics):
            result.plan = None
    return result
