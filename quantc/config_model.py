"""Pydantic models of the config tree (frozen, closed): the same language as
``schemas/quantc.schema.json``, for Python users who build configs as objects.

A test over a generated corpus checks that these models and the JSON Schema accept and reject the
same documents. The validation fast path (``quantc validate``) does not import this module.
Validators only reject; nothing here rewrites a value.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, field_validator

from . import gpus, kernel_specs, keys

WeightName = Literal[tuple(keys.WEIGHT_KEYS)]  # type: ignore[valid-type]
ActivationName = Literal[tuple(keys.ACTIVATION_KEYS)]  # type: ignore[valid-type]
Shorthand = Literal[tuple(keys.SHORTHANDS)]  # type: ignore[valid-type]
Family = Literal[tuple(kernel_specs.FAMILIES)]  # type: ignore[valid-type]
GpuName = Literal[tuple(gpus.GPUS)]  # type: ignore[valid-type]
PatternText = Annotated[StrictStr, Field(min_length=1)]


def _json_integer(value):
    """JSON Schema's integer: an int, or a float with no fractional part (never a bool)."""
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return value


JsonInt = Annotated[Union[StrictInt, StrictFloat], Field()]


class _Closed(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScaleModel(_Closed):
    dtype: Optional[Literal[tuple(keys.SCALE_DTYPES)]] = None  # type: ignore[valid-type]
    granularity: Optional[Literal[tuple(keys.GRANULARITIES)]] = None  # type: ignore[valid-type]
    shape: Optional[Annotated[list[JsonInt], Field(min_length=2, max_length=2)]] = None
    dynamic: Optional[StrictBool] = None

    @field_validator("shape")
    @classmethod
    def _shape(cls, value):
        for v in value or ():
            _json_integer(v)
            if v < 1:
                raise ValueError("shape entries are >= 1")
        return value


class KeyMappingModel(_Closed):
    dtype: Optional[Literal[tuple(keys.ELEMENT_FORMATS)]] = None  # type: ignore[valid-type]
    scale: Optional[ScaleModel] = None
    global_scale: Optional[ScaleModel] = None
    symmetric: Optional[StrictBool] = None


class KindMappingModel(_Closed):
    weight: Optional[Union[WeightName, KeyMappingModel]] = None
    activation: Optional[Union[ActivationName, KeyMappingModel]] = None


KindValue = Union[Shorthand, KindMappingModel]


class RuleModel(_Closed):
    match: Union[PatternText, Annotated[list[PatternText], Field(min_length=1)]]
    linear: Optional[KindValue] = None
    moe: Optional[KindValue] = None
    kv_cache: Optional[KindValue] = None
    skip: Optional[StrictBool] = None


class BackendModel(_Closed):
    linear: Optional[Family] = None
    moe: Optional[Family] = None
    kv_cache: Optional[Family] = None


class TargetModel(_Closed):
    gpu: Optional[GpuName] = None
    tensor_parallel: Optional[JsonInt] = None
    expert_parallel: Optional[StrictBool] = None

    @field_validator("tensor_parallel")
    @classmethod
    def _tp(cls, value):
        if value is not None:
            _json_integer(value)
            if value < 1:
                raise ValueError("tensor_parallel is >= 1")
        return value


class ConfigModel(_Closed):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    schema_: Optional[StrictStr] = Field(None, alias="$schema")
    quantc: JsonInt
    extends: Optional[Union[Annotated[StrictStr, Field(min_length=1)],
                            Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(min_length=1)]]] = None
    linear: Optional[KindValue] = None
    moe: Optional[KindValue] = None
    kv_cache: Optional[KindValue] = None
    rules: Optional[list[RuleModel]] = None
    ignore: Optional[list[PatternText]] = None
    backend: Optional[BackendModel] = None
    target: Optional[TargetModel] = None

    @field_validator("quantc")
    @classmethod
    def _version(cls, value):
        if value != 1:
            raise ValueError("unsupported version: this quantc reads config version 1")
        return value


def model_accepts(data) -> bool:
    """Whether the pydantic models accept ``data`` (a plain tree). Optional fields given as an
    explicit null are rejected like the schema does: null is never a value in the config language."""
    from pydantic import ValidationError

    if _has_null(data):
        return False
    try:
        ConfigModel.model_validate(data)
    except ValidationError:
        return False
    return True


def _has_null(value) -> bool:
    todo = [value]
    while todo:
        v = todo.pop()
        if v is None:
            return True
        if isinstance(v, dict):
            todo.extend(v.values())
        elif isinstance(v, list):
            todo.extend(v)
    return False
