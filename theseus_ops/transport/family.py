"""Architecture families: which parameter reads and writes which activation site.

Each family is one JSON file in ``families/``. Loading turns it into frozen records and refuses
unknown keys and dangling site references, so a typo fails in a test instead of silently
dropping a parameter from transport.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from theseus_ops.errors import InputError, UnsupportedArchitectureError

LAYER = "${layer}"
RULES = ("linear", "bias", "norm", "embedding", "vector", "patch_conv")
ROW_KINDS = ("vocab", "positions", "cls_grid")
SHARED_PREFIX = "@"


@dataclass(frozen=True)
class SiteSpec:
    """Where a coordinate space is observed: a module's input or output, optionally one chunk of it.

    ``module`` lists candidate paths, first match wins: transformers renames modules between
    versions while checkpoints keep their tensor names. Paths are relative to the model's prefix
    unless ``absolute`` (a head outside the backbone).
    """

    module: tuple[str, ...]
    capture: Literal["input", "output"]
    chunk: int | None = None
    chunks: int = 1
    absolute: bool = False


@dataclass(frozen=True)
class ParamSpec:
    """One parameter (name template) and the rule that transports it.

    Names are relative to the model's prefix (one of the family's ``prefixes``: ``bert.`` inside a
    ``BertForSequenceClassification``, nothing in a bare ``BertModel``), unless ``absolute``: a task
    head such as ``classifier.weight`` sits outside the backbone whatever the prefix.
    """

    name: str
    rule: str
    writes: tuple[str, ...]
    reads: str | None = None
    layout: Literal["out_in", "in_out"] = "out_in"
    rows: str | None = None
    tied_to: str | None = None
    absolute: bool = False

    @property
    def layered(self) -> bool:
        return LAYER in self.name


@dataclass(frozen=True)
class FamilySpec:
    """A whole architecture family, as loaded from its JSON file."""

    name: str
    description: str
    model_types: tuple[str, ...]
    num_layers_key: str
    input_kind: Literal["tokens", "pixels"]
    token_layout: Literal["sequence", "cls_grid"]
    global_sites: dict[str, SiteSpec]
    layer_sites: dict[str, SiteSpec]
    parameters: tuple[ParamSpec, ...]
    prefixes: tuple[str, ...] = ("",)
    _patterns: tuple[tuple[re.Pattern[str], ParamSpec], ...] = field(default=(), compare=False, repr=False)

    def match(self, name: str) -> tuple[ParamSpec, int | None, str] | None:
        """Find the spec of a concrete parameter name: (spec, layer index or None, prefix)."""
        for pattern, spec in self._patterns:
            found = pattern.fullmatch(name)
            if found:
                layer = found.group("layer")
                return spec, (int(layer) if layer else None), found.group("prefix")
        return None

    def site(self, site: str, layered: bool) -> SiteSpec:
        """The site a parameter references: layer sites first for layered parameters."""
        if layered and site in self.layer_sites:
            return self.layer_sites[site]
        return self.global_sites[site]


def space_key(site: str, layer: int | None, layered_site: bool) -> str:
    """The name of a coordinate space: ``layers.3.q`` for a layer site, ``embed`` for a global one."""
    if site.startswith(SHARED_PREFIX):
        return site
    return f"layers.{layer}.{site}" if layered_site else site


def is_shared(key: str) -> bool:
    """Shared spaces (vocabulary, labels, pixels) keep the identity map."""
    return key.startswith(SHARED_PREFIX)


def resolve_name(template: str, layer: int | None, prefix: str = "", absolute: bool = False) -> str:
    """A concrete parameter or module name from a template (an absolute one takes no prefix)."""
    name = template if layer is None else template.replace(LAYER, str(layer))
    return name if absolute else prefix + name


_FAMILY_KEYS = {
    "name", "description", "model_types", "num_layers_key", "input_kind", "token_layout",
    "global_sites", "layer_sites", "parameters", "prefixes",
}
_SITE_KEYS = {"module", "capture", "chunk", "chunks", "absolute"}
_PARAM_KEYS = {"name", "rule", "writes", "reads", "layout", "rows", "tied_to", "absolute"}


def _reject_unknown(kind: str, where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown {kind} key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def parse_family(data: dict[str, Any], where: str = "<family>") -> FamilySpec:
    """Validate one family description and build its frozen record."""
    _reject_unknown("family", where, data, _FAMILY_KEYS)

    def sites(raw: dict[str, Any], layered: bool) -> dict[str, SiteSpec]:
        out = {}
        for site_name, site in raw.items():
            _reject_unknown("site", f"{where}: site {site_name}", site, _SITE_KEYS)
            if site["capture"] not in ("input", "output"):
                raise ValueError(f"{where}: site {site_name}: capture must be input or output")
            modules = site["module"] if isinstance(site["module"], list) else [site["module"]]
            if any(layered != (LAYER in m) for m in modules):
                raise ValueError(f"{where}: site {site_name}: layer sites, and only they, contain {LAYER}")
            out[site_name] = SiteSpec(**{**site, "module": tuple(modules)})
        return out

    global_sites = sites(data.get("global_sites", {}), layered=False)
    layer_sites = sites(data.get("layer_sites", {}), layered=True)
    params = []
    for raw in data["parameters"]:
        _reject_unknown("parameter", f"{where}: {raw.get('name')}", raw, _PARAM_KEYS)
        writes = raw["writes"]
        spec = ParamSpec(
            name=raw["name"],
            rule=raw["rule"],
            writes=tuple(writes) if isinstance(writes, list) else (writes,),
            reads=raw.get("reads"),
            layout=raw.get("layout", "out_in"),
            rows=raw.get("rows"),
            tied_to=raw.get("tied_to"),
            absolute=bool(raw.get("absolute", False)),
        )
        if spec.rule not in RULES:
            raise ValueError(f"{where}: {spec.name}: unknown rule {spec.rule!r}; known: {RULES}")
        if (spec.rule == "linear") != (spec.reads is not None):
            raise ValueError(f"{where}: {spec.name}: 'reads' is required for, and only for, linear weights")
        if (spec.rule == "embedding") != (spec.rows is not None) or (spec.rows and spec.rows not in ROW_KINDS):
            raise ValueError(f"{where}: {spec.name}: embeddings need rows in {ROW_KINDS}, others none")
        for site in (*spec.writes, *([spec.reads] if spec.reads else [])):
            if site.startswith(SHARED_PREFIX):
                continue
            if site not in global_sites and not (spec.layered and site in layer_sites):
                raise ValueError(f"{where}: {spec.name}: references undefined site {site!r}")
        params.append(spec)
    prefixes = tuple(data.get("prefixes", [""]))
    patterns = []
    prefix_group = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    for spec in params:
        body = re.escape(spec.name).replace(re.escape(LAYER), r"(?P<layer>\d+)")
        if LAYER not in spec.name:
            body += r"(?P<layer>)?"
        prefix = "(?P<prefix>)" if spec.absolute else rf"(?P<prefix>{prefix_group})"
        patterns.append((re.compile(prefix + body), spec))
    return FamilySpec(
        name=data["name"],
        description=data["description"],
        model_types=tuple(data["model_types"]),
        num_layers_key=data["num_layers_key"],
        input_kind=data["input_kind"],
        token_layout=data["token_layout"],
        global_sites=global_sites,
        layer_sites=layer_sites,
        parameters=tuple(params),
        prefixes=prefixes,
        _patterns=tuple(patterns),
    )


@cache
def all_families() -> tuple[FamilySpec, ...]:
    """Every family shipped with the package, loaded and validated once."""
    files = sorted(p for p in resources.files("theseus_ops.transport.families").iterdir() if p.name.endswith(".json"))
    return tuple(parse_family(json.loads(p.read_text()), where=p.name) for p in files)


def supported_model_types() -> list[str]:
    return sorted(t for fam in all_families() for t in fam.model_types)


def family_for_model_type(model_type: str) -> FamilySpec:
    """The family of a Hugging Face ``config.model_type``, or an error naming the supported ones."""
    for fam in all_families():
        if model_type in fam.model_types:
            return fam
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported_model_types())}"
    )


def same_family(source_type: str, target_type: str) -> FamilySpec:
    """Both models' family; models of different families cannot share a transport."""
    source, target = family_for_model_type(source_type), family_for_model_type(target_type)
    if source.name != target.name:
        raise InputError(
            f"source and target are different families ({source.name} vs {target.name}); "
            "transport needs two models of one family"
        )
    return source
