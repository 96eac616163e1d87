"""``--set path=value`` (and ``--gpu`` / ``--tp``): edits of the merged config, as if written last.

Precedence (SPEC §3): rules < ``--set`` < ignore. A kind field set here therefore wins over every rule
for the modules that kind's defaults cover; ``target.*`` and ``backend.*`` simply replace the value.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .config import FIELDS, LAYER_KINDS, Config, KindSetting, Setting
from .diagnostics import Diagnostic, Span, unknown_name_hint
from .gpus import GPUS
from .kernel_specs import FAMILIES
from .keys import KEYS_BY_ROLE, SHORTHANDS

SET_PATHS = (
    *[f"{kind}" for kind in LAYER_KINDS],
    *[f"{kind}.{f}" for kind in LAYER_KINDS for f in FIELDS],
    "target.gpu", "target.tensor_parallel", "target.expert_parallel",
    *[f"backend.{kind}" for kind in LAYER_KINDS],
)


@dataclass(frozen=True)
class Overrides:
    """Kind-field edits that outrank rules; kept apart from the config's own kind defaults."""

    kinds: dict  # kind -> KindSetting


def _span(text: str) -> Span:
    return Span(f"--set {text}")


def apply_overrides(config: Config, assignments: list[str]) -> tuple[Config, Overrides, tuple[Diagnostic, ...]]:
    diags: list[Diagnostic] = []
    kinds: dict[str, dict[str, Setting]] = {}
    target = config.target
    backend = dict(config.backend)
    for text in assignments:
        span = _span(text)
        if "=" not in text:
            diags.append(Diagnostic("QC601", "error", f"--set expects path=value, got {text!r}", span,
                                    hint="for example --set moe.activation=mxfp8"))
            continue
        path, value = (part.strip() for part in text.split("=", 1))
        if path not in SET_PATHS:
            diags.append(Diagnostic("QC602", "error", f"--set: unknown path {path!r}", span,
                                    hint=unknown_name_hint(path, SET_PATHS)))
            continue
        head, _, tail = path.partition(".")
        if head in LAYER_KINDS:
            if not tail:  # a shorthand for the whole kind
                if value not in SHORTHANDS:
                    diags.append(Diagnostic("QC603", "error", f"--set {path}: unknown scheme shorthand {value!r}", span,
                                            hint=unknown_name_hint(value, SHORTHANDS)))
                    continue
                w, a = SHORTHANDS[value]
                kinds.setdefault(head, {})["weight"] = Setting(w, span, f"--set {text}")
                kinds[head]["activation"] = Setting(a, span, f"--set {text}")
                continue
            catalog = KEYS_BY_ROLE[tail]
            if value not in catalog:
                diags.append(Diagnostic("QC603", "error", f"--set {path}: unknown {tail} key {value!r}", span,
                                        hint=unknown_name_hint(value, catalog)))
                continue
            kinds.setdefault(head, {})[tail] = Setting(value, span, f"--set {text}")
        elif head == "target":
            if tail == "gpu":
                if value not in GPUS:
                    diags.append(Diagnostic("QC604", "error", f"unknown GPU {value!r}", span, hint=unknown_name_hint(value, GPUS)))
                    continue
                target = replace(target, gpu=Setting(value, span, f"--set {text}"))
            elif tail == "tensor_parallel":
                if not value.isdigit() or int(value) < 1:
                    diags.append(Diagnostic("QC605", "error", f"tensor_parallel must be a positive integer, got {value!r}", span,
                                            hint="for example --tp 2"))
                    continue
                target = replace(target, tensor_parallel=int(value), tensor_parallel_span=span)
            else:
                if value.lower() not in ("true", "false"):
                    diags.append(Diagnostic("QC605", "error", f"expert_parallel must be true or false, got {value!r}", span))
                    continue
                target = replace(target, expert_parallel=value.lower() == "true", expert_parallel_span=span)
        else:  # backend
            if value not in FAMILIES:
                diags.append(Diagnostic("QC606", "error", f"unknown backend family {value!r}", span, hint=unknown_name_hint(value, FAMILIES)))
                continue
            backend[tail] = Setting(value, span, f"--set {text}")
    overrides = Overrides({k: KindSetting(v.get("weight"), v.get("activation")) for k, v in kinds.items()})
    return replace(config, target=target, backend=backend), overrides, tuple(diags)
