"""The parts of a PEFT ``adapter_config.json`` that decide a LoRA adapter's delta, validated on parse.

The scaling of every adapted weight comes from this file (``lora_alpha / r``, or ``/ sqrt(r)``
with rsLoRA, per-module overrides in ``alpha_pattern`` and ``rank_pattern``). A string alpha, a
rank of 0, ``Infinity`` or an invalid pattern would otherwise surface as a crash deep in transport,
or as Inf weights written with exit 0; here each is one error naming the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from theseus_ops.errors import InputError

DEFAULT_R = 8  # PEFT's defaults, used when the file leaves a field out
DEFAULT_ALPHA = 8


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compile(pattern: object, what: str, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise InputError(f"{where}: {what} key {pattern!r} is not a non-empty string")
    try:
        return re.compile(rf"(^|\.){pattern}$")
    except (re.error, RecursionError, OverflowError) as exc:
        raise InputError(f"{where}: {what} key {pattern[:80]!r} is not a valid regular expression "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


@dataclass
class LoraAdapterConfig:
    """A LoRA adapter's scaling rules; ``raw`` is the whole file, written back with the transported adapter."""

    raw: dict
    where: str = "adapter_config.json"
    r: int = field(init=False)
    lora_alpha: float = field(init=False)
    use_rslora: bool = field(init=False)
    alpha_pattern: list[tuple[re.Pattern, float]] = field(init=False)
    rank_pattern: list[tuple[re.Pattern, int]] = field(init=False)

    def __post_init__(self) -> None:
        raw, where = self.raw, self.where
        if not isinstance(raw, dict):
            raise InputError(f"{where}: an adapter config must be a JSON object, got {type(raw).__name__}")
        peft_type = raw.get("peft_type", "")
        if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
            raise InputError(f"{where}: only LoRA adapters are supported, got peft_type {str(peft_type)[:40]!r}")
        for flag in ("use_dora", "use_rslora"):
            if not isinstance(raw.get(flag, False), bool | None):
                raise InputError(f"{where}: {flag} must be true or false, got {str(raw.get(flag))[:40]!r}")
        if raw.get("use_dora"):
            raise InputError(f"{where}: DoRA adapters are not supported (their magnitude vector has no transport rule)")
        self.use_rslora = bool(raw.get("use_rslora"))
        self.r = self._rank(raw.get("r", DEFAULT_R), "r")
        self.lora_alpha = self._alpha(raw.get("lora_alpha", DEFAULT_ALPHA), "lora_alpha")
        self.alpha_pattern = [(_compile(k, "alpha_pattern", where), self._alpha(v, f"alpha_pattern[{k[:40]!r}]"))
                              for k, v in self._pattern(raw, "alpha_pattern").items()]
        self.rank_pattern = [(_compile(k, "rank_pattern", where), self._rank(v, f"rank_pattern[{k[:40]!r}]"))
                             for k, v in self._pattern(raw, "rank_pattern").items()]

    def _pattern(self, raw: dict, key: str) -> dict:
        value = raw.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise InputError(f"{self.where}: {key} must be an object of module pattern -> value")
        return value

    def _rank(self, value: object, what: str) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{self.where}: {what} must be a positive integer (the LoRA rank), got {repr(value)[:40]}")
        return value

    def _alpha(self, value: object, what: str) -> float:
        if not _is_number(value) or not math.isfinite(value):
            raise InputError(f"{self.where}: {what} must be a finite number, got {repr(value)[:40]}")
        return float(value)

    def rank_of(self, module: str) -> int:
        """The rank PEFT builds ``module`` with: the last matching ``rank_pattern``, else ``r``."""
        rank = self.r
        for pattern, value in self.rank_pattern:
            if pattern.search(module):
                rank = value
        return rank

    def scaling(self, module: str, rank: int) -> float:
        """``alpha / rank`` (``alpha / sqrt(rank)`` with rsLoRA), with ``alpha_pattern`` applied."""
        alpha = self.lora_alpha
        for pattern, value in self.alpha_pattern:
            if pattern.search(module):
                alpha = value
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank
