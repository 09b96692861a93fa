"""Architecture specs: which parameter reads and writes which activation site.

Each architecture (the model types sharing one layout: ``llama`` covers Llama, Qwen2 and
Mistral) is one JSON file in ``architectures/``. Loading turns it into frozen records and refuses
unknown keys and dangling site references, so a typo fails in a test instead of silently
dropping a parameter from transport.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

from theseus_ops.errors import InputError, UnsupportedArchitectureError
from theseus_ops.transport.config_refs import MISSING, ConfigRef, lookup, valid_ref
from theseus_ops.transport.config_refs import config_int as config_int  # re-exported: callers resolve references here
from theseus_ops.transport.config_refs import config_value as config_value
from theseus_ops.transport.head_maps import WITHIN_HEAD
from theseus_ops.transport.rule_table import RULES as RULES  # the rule names a parameter may give
from theseus_ops.transport.rule_table import check_options, check_rule

LAYER = "${layer}"
# The stack every architecture has; an encoder-decoder adds named ones (T5's ``decoder``, placeholder ``${decoder}``).
MAIN_STACK = "layers"
# Which token sequence a site sees: the model's input, or an encoder-decoder's decoder input.
SEQUENCES = ("input", "decoder")
SHARED_PREFIX = "@"
# The architecture's name as the JSON outputs call it (the alignment provenance, ``inspect``): its old name, kept.
ARCHITECTURE_KEY = "family"

@dataclass(frozen=True)
class Split:
    """A fused output axis, resolved for one model: ``groups`` repeats of the parts, whose widths are
    in the proportion ``ratio``. GPT-2's c_attn and Phi-3's qkv_proj are one group (contiguous parts,
    Phi-3's in proportion heads : kv heads : kv heads); GPT-NeoX's query_key_value is one group per
    head, each holding that head's q, k and v.
    """

    groups: int
    ratio: tuple[int, ...]

    def widths(self, total: int, what: str) -> tuple[int, ...]:
        """Each part's width within one group, or InputError when ``total`` does not divide."""
        unit = self.groups * sum(self.ratio)
        if total % unit:
            raise InputError(f"{what}: a fused width of {total} does not split into {self.groups} group(s) of "
                             f"parts in proportion {list(self.ratio)}; the config does not match the weights")
        return tuple(r * (total // unit) for r in self.ratio)


@dataclass(frozen=True)
class SplitSpec:
    """A fused layout as the architecture declares it: config references, resolved per model."""

    ratio: tuple[ConfigRef, ...]
    groups: ConfigRef = 1

    def resolve(self, config: Mapping[str, Any], what: str) -> Split:
        return Split(config_int(config, self.groups, what),
                     tuple(config_int(config, r, what) for r in self.ratio))


@dataclass(frozen=True)
class HeadMapSpec:
    """A space made of attention heads whose map must act head by head (``head_maps``).

    ``heads`` is the config reference of the head count; ``within`` what the map may do inside a head:
    ``identity`` (coordinates pinned), ``shared`` (one orthogonal head_dim map for every head) or
    ``rotary`` (one map for every head that commutes with the rotary embedding's pair rotations on the
    first ``rotary_fraction`` of head_dim, any orthogonal map on the rest).
    """

    heads: ConfigRef
    within: str = "rotary"
    rotary_fraction: ConfigRef = 1.0


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
    split: str | None = None
    part: int | None = None
    map: HeadMapSpec | None = None
    sequence: str = "input"
    # The site whose coordinates this one keeps: the output of an elementwise op (a norm) on that site,
    # such as a pooled token's final LayerNorm. A global site may follow a main-stack site (its last
    # layer), a layer site one of its own stack (same layer). The ``weights`` fill then completes this
    # space from that space's map too, where no weight reads it (``weight_prior``).
    follows: str | None = None


@dataclass(frozen=True)
class StackSpec:
    """A stack of identical layers with its own depth and layer map (an encoder's, a decoder's).

    Its sites and parameters name the layer with ``placeholder``: ``${layer}`` for the main stack,
    ``${<name>}`` for a further one. Its spaces are keyed ``<name>.<layer>.<site>``.
    """

    name: str
    num_layers_key: ConfigRef
    sites: dict[str, SiteSpec]

    @property
    def placeholder(self) -> str:
        return LAYER if self.name == MAIN_STACK else "${" + self.name + "}"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter (name template) and the rule that transports it.

    Names are relative to the model's prefix (one of the architecture's ``prefixes``: ``bert.`` inside a
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
    split: str | None = None
    head_block: bool = False
    output_scale: tuple[ConfigRef, float] | None = None
    stack: str | None = None  # the stack whose layer the name's placeholder stands for; None: a global parameter
    # Held by the stack's first layer only and used by all of its layers (T5's relative position bias): it goes
    # to the target's first layer alone, whatever else the source's first layer feeds.
    first_layer: bool = False

    @property
    def layered(self) -> bool:
        return self.stack is not None


@dataclass(frozen=True)
class ArchitectureSpec:
    """A whole architecture spec, as loaded from its JSON file."""

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
    splits: dict[str, SplitSpec] = field(default_factory=dict)
    requires: dict[str, Any] = field(default_factory=dict)
    stacks: dict[str, StackSpec] = field(default_factory=dict)
    decoder_start: ConfigRef | None = None
    # Objects of config.json (dotted keys) that hold settings a wrapper does not repeat at its top level: a full
    # CLIPModel keeps its vision tower's under vision_config.
    config_sections: tuple[str, ...] = ()
    # Whether the embeddings are tied when config.json leaves tie_word_embeddings out (GPT-2's checkpoints do).
    tie_default: bool = False
    _patterns: tuple[tuple[re.Pattern[str], ParamSpec], ...] = field(default=(), compare=False, repr=False)

    def match(self, name: str) -> tuple[ParamSpec, int | None, str] | None:
        """Find the spec of a concrete parameter name: (spec, layer index or None, prefix)."""
        for pattern, spec in self._patterns:
            found = pattern.fullmatch(name)
            if found:
                layer = found.group("layer")
                return spec, (int(layer) if layer else None), found.group("prefix")
        return None

    def site(self, site: str, stack: str | None) -> SiteSpec:
        """The site a parameter references: its stack's sites first for layered parameters."""
        if stack is not None and site in self.stacks[stack].sites:
            return self.stacks[stack].sites[site]
        return self.global_sites[site]

    def is_layer_site(self, site: str, stack: str | None) -> bool:
        return stack is not None and site in self.stacks[stack].sites

    @property
    def encoder_decoder(self) -> bool:
        """Whether the model takes decoder inputs (``decoder_start`` names the token that starts them)."""
        return self.decoder_start is not None

    def settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """config.json as the architecture reads it: the top level, then each of ``config_sections`` in turn for a
        key the top level lacks (a full CLIPModel's layer count sits in its vision_config only)."""
        merged: dict[str, Any] = {}
        for section in reversed(self.config_sections):
            found = lookup(config, section)
            if isinstance(found, Mapping):
                merged.update(found)
        merged.update(config)
        return merged

    def check_config(self, config: Mapping[str, Any], where: str) -> None:
        """Refuse a model whose config selects a layout this architecture does not describe.

        A key the config leaves out takes transformers' default, which is the layout the architecture describes.
        """
        for key, wanted in self.requires.items():
            found = lookup(config, key)
            if found is not MISSING and found != wanted:
                raise InputError(f"{where}: the {self.name} architecture describes {key}={json.dumps(wanted)} "
                                 f"models only, this config has {key}={json.dumps(found)}")


def space_key(site: str, layer: int | None, stack: str | None) -> str:
    """The name of a coordinate space: ``layers.3.q`` for a site of the main stack's layer 3,
    ``decoder.1.cross_q`` for one of a further stack, ``embed`` for a global one (``stack`` None)."""
    if site.startswith(SHARED_PREFIX):
        return site
    return f"{stack}.{layer}.{site}" if stack is not None else site


def parse_space_key(key: str, architecture: ArchitectureSpec) -> tuple[str | None, int | None, str]:
    """(stack, layer, site) of a space key; (None, None, site) for a global space."""
    parts = key.split(".", 2)
    if len(parts) == 3 and parts[0] in architecture.stacks and parts[1].isdigit():
        return parts[0], int(parts[1]), parts[2]
    return None, None, key


def is_shared(key: str) -> bool:
    """Shared spaces (vocabulary, labels, pixels) keep the identity map."""
    return key.startswith(SHARED_PREFIX)


def resolve_name(template: str, layer: int | None, prefix: str = "", absolute: bool = False) -> str:
    """A concrete parameter or module name from a template (an absolute one takes no prefix)."""
    name = template if layer is None else _PLACEHOLDER.sub(str(layer), template)
    return name if absolute else prefix + name


_PLACEHOLDER = re.compile(r"\$\{[a-z_]+\}")  # any stack's layer placeholder; a name holds at most one


_ARCHITECTURE_KEYS = {
    "name", "description", "model_types", "num_layers_key", "input_kind", "token_layout",
    "global_sites", "layer_sites", "parameters", "prefixes", "splits", "requires", "stacks", "decoder_start",
    "config_sections", "tie_default",
}
_SITE_KEYS = {"module", "capture", "chunk", "chunks", "absolute", "split", "part", "map", "sequence", "follows"}
_STACK_KEYS = {"num_layers_key", "sites", "sequence"}
_PARAM_KEYS = {"name", "rule", "writes", "reads", "layout", "rows", "tied_to", "absolute", "split", "head_block",
               "output_scale", "first_layer"}
_SPLIT_KEYS = {"ratio", "groups"}
_MAP_KEYS = {"kind", "heads", "within", "rotary_fraction"}
_SCALE_KEYS = {"config", "power"}


def _reject_unknown(what: str, where: str, data: dict[str, Any], allowed: set[str]) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise ValueError(f"{where}: unknown {what} key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")


def parse_architecture(data: dict[str, Any], where: str = "<architecture>") -> ArchitectureSpec:
    """Validate one architecture spec and build its frozen record."""
    _reject_unknown("family", where, data, _ARCHITECTURE_KEYS)  # "unknown family key": tests assert the words
    splits = _parse_splits(data.get("splits", {}), where)

    stack_raw = data.get("stacks", {})
    if not isinstance(stack_raw, dict) or MAIN_STACK in stack_raw:
        raise ValueError(f"{where}: stacks must be an object of name -> stack, besides the main one ({MAIN_STACK})")
    for stack_name in stack_raw:
        if not re.fullmatch(r"[a-z][a-z_]*", stack_name):
            raise ValueError(f"{where}: stack name {stack_name!r} must be lower-case letters and underscores")
    placeholders = {MAIN_STACK: LAYER, **{n: "${" + n + "}" for n in stack_raw}}

    def sites(raw: Any, stack: str | None, sequence: str = "input") -> dict[str, SiteSpec]:
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: sites must be an object of name -> site")
        out = {}
        for site_name, site in raw.items():
            _reject_unknown("site", f"{where}: site {site_name}", site, _SITE_KEYS)
            if site["capture"] not in ("input", "output"):
                raise ValueError(f"{where}: site {site_name}: capture must be input or output")
            modules = site["module"] if isinstance(site["module"], list) else [site["module"]]
            for module in modules:
                found = {n for n, ph in placeholders.items() if ph in module}
                if found != ({stack} if stack else set()):
                    owner = f"the {stack} stack's placeholder {placeholders[stack]}" if stack else "no placeholder"
                    raise ValueError(f"{where}: site {site_name}: module {module!r} must contain {owner}")
            fields = {**site, "module": tuple(modules), "sequence": site.get("sequence", sequence)}
            if fields["sequence"] not in SEQUENCES:
                raise ValueError(f"{where}: site {site_name}: sequence must be one of {SEQUENCES}")
            if "split" in site:
                if "chunk" in site or "chunks" in site:
                    raise ValueError(f"{where}: site {site_name}: give either split and part, or chunk and chunks")
                if site["split"] not in splits:
                    raise ValueError(f"{where}: site {site_name}: undefined split {site['split']!r}")
                part, count = site.get("part"), len(splits[site["split"]].ratio)
                if not isinstance(part, int) or isinstance(part, bool) or not 0 <= part < count:
                    raise ValueError(f"{where}: site {site_name}: part must index the parts of split {site['split']!r}")
            elif "part" in site:
                raise ValueError(f"{where}: site {site_name}: part needs a split")
            if "map" in site:
                fields["map"] = _parse_head_map(site["map"], f"{where}: site {site_name}")
            out[site_name] = SiteSpec(**fields)
        return out

    global_sites = sites(data.get("global_sites", {}), None)
    layer_sites = sites(data.get("layer_sites", {}), MAIN_STACK)
    stacks = {MAIN_STACK: StackSpec(MAIN_STACK, data["num_layers_key"], layer_sites)}
    for stack_name, raw_stack in stack_raw.items():
        _reject_unknown("stack", f"{where}: stack {stack_name}", raw_stack, _STACK_KEYS)
        if not valid_ref(raw_stack.get("num_layers_key")):
            raise ValueError(f"{where}: stack {stack_name}: num_layers_key must be a config reference")
        stacks[stack_name] = StackSpec(stack_name, raw_stack["num_layers_key"],
                                       sites(raw_stack.get("sites", {}), stack_name,
                                             raw_stack.get("sequence", "input")))
    _check_follows(global_sites, stacks, where)
    params = []
    for raw in data["parameters"]:
        _reject_unknown("parameter", f"{where}: {raw.get('name')}", raw, _PARAM_KEYS)
        writes = raw["writes"]
        in_name = [n for n, ph in placeholders.items() if ph in raw["name"]]
        if len(in_name) > 1:
            raise ValueError(f"{where}: {raw['name']}: a parameter belongs to one stack, it names {in_name}")
        spec = ParamSpec(
            name=raw["name"],
            rule=raw["rule"],
            writes=tuple(writes) if isinstance(writes, list) else (writes,),
            reads=raw.get("reads"),
            layout=raw.get("layout", "out_in"),
            rows=raw.get("rows"),
            tied_to=raw.get("tied_to"),
            absolute=bool(raw.get("absolute", False)),
            split=raw.get("split"),
            head_block=bool(raw.get("head_block", False)),
            output_scale=_parse_output_scale(raw.get("output_scale"), f"{where}: {raw.get('name')}"),
            stack=in_name[0] if in_name else None,
            first_layer=raw.get("first_layer", False),
        )
        if not isinstance(spec.first_layer, bool) or (spec.first_layer and spec.stack is None):
            raise ValueError(f"{where}: {spec.name}: first_layer (true or false) is for a parameter of a stack")
        check_rule(spec, where)
        own_sites = stacks[spec.stack].sites if spec.stack else {}
        for site in (*spec.writes, *([spec.reads] if spec.reads else [])):
            if site.startswith(SHARED_PREFIX):
                continue
            if site not in global_sites and site not in own_sites:
                raise ValueError(f"{where}: {spec.name}: references undefined site {site!r}")
        _check_param_extras(spec, raw, splits, global_sites, own_sites, where)
        params.append(spec)
    requires = data.get("requires", {})
    if not isinstance(requires, dict):
        raise ValueError(f"{where}: requires must be an object of config key -> value")
    prefixes = tuple(data.get("prefixes", [""]))
    patterns = []
    prefix_group = "|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True))
    for spec in params:
        body = re.escape(spec.name)
        if spec.stack is not None:
            body = body.replace(re.escape(placeholders[spec.stack]), r"(?P<layer>\d+)")
        else:
            body += r"(?P<layer>)?"
        prefix = "(?P<prefix>)" if spec.absolute else rf"(?P<prefix>{prefix_group})"
        patterns.append((re.compile(prefix + body), spec))
    return ArchitectureSpec(
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
        splits=splits,
        requires=dict(requires),
        stacks=stacks,
        decoder_start=_decoder_start(data.get("decoder_start"), where),
        config_sections=_config_sections(data.get("config_sections", []), where),
        tie_default=_tie_default(data.get("tie_default", False), where),
        _patterns=tuple(patterns),
    )


def _check_follows(global_sites: dict[str, SiteSpec], stacks: dict[str, StackSpec], where: str) -> None:
    """A global site follows a global or main-stack site; a layer site one of its own stack; never itself."""
    owners = [(None, global_sites, {**global_sites, **stacks[MAIN_STACK].sites})]
    owners += [(name, stack.sites, stack.sites) for name, stack in stacks.items()]
    for stack, own, allowed in owners:
        for site_name, site in own.items():
            if site.follows is None:
                continue
            if not isinstance(site.follows, str) or site.follows == site_name or site.follows not in allowed:
                scope = "a global or main-stack site" if stack is None else f"another site of the {stack} stack"
                raise ValueError(f"{where}: site {site_name}: follows must name {scope}, got {site.follows!r}")


def _decoder_start(raw: Any, where: str) -> ConfigRef | None:
    if raw is not None and not valid_ref(raw):
        raise ValueError(f"{where}: decoder_start must be a config reference (the decoder's start token)")
    return raw


def _config_sections(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise ValueError(f"{where}: config_sections must list config.json keys (dotted for nested objects) of "
                         "objects that hold the architecture's settings")
    return tuple(raw)


def _tie_default(raw: Any, where: str) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"{where}: tie_default must be true or false")
    return raw


def _parse_splits(raw: Any, where: str) -> dict[str, SplitSpec]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: splits must be an object of name -> split")
    out = {}
    for name, split in raw.items():
        _reject_unknown("split", f"{where}: split {name}", split, _SPLIT_KEYS)
        ratio = split.get("ratio")
        if not isinstance(ratio, list) or len(ratio) < 2 or not all(valid_ref(r) for r in ratio):
            raise ValueError(f"{where}: split {name}: ratio must list at least two config references or integers")
        groups = split.get("groups", 1)
        if not valid_ref(groups):
            raise ValueError(f"{where}: split {name}: groups must be a config reference or an integer")
        out[name] = SplitSpec(tuple(ratio), groups)
    return out


def _parse_head_map(raw: Any, where: str) -> HeadMapSpec:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: map must be an object")
    _reject_unknown("map", where, raw, _MAP_KEYS)
    if raw.get("kind") != "per_head":
        raise ValueError(f"{where}: map kind must be per_head")
    if not valid_ref(raw.get("heads")):
        raise ValueError(f"{where}: a per_head map needs heads (a config reference)")
    within = raw.get("within", "rotary")
    if within not in WITHIN_HEAD:
        raise ValueError(f"{where}: within must be one of {WITHIN_HEAD}, got {within!r}")
    fraction = raw.get("rotary_fraction", 1.0)
    if not valid_ref(fraction):
        raise ValueError(f"{where}: rotary_fraction must be a config reference or a number")
    return HeadMapSpec(raw["heads"], within, fraction)


def _parse_output_scale(raw: Any, where: str) -> tuple[ConfigRef, float] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: output_scale must be an object with config and power")
    _reject_unknown("output_scale", where, raw, _SCALE_KEYS)
    power = raw.get("power", 1.0)
    if not valid_ref(raw.get("config")) or isinstance(power, bool) or not isinstance(power, int | float):
        raise ValueError(f"{where}: output_scale needs config (a config reference) and a numeric power")
    return raw["config"], float(power)


def _check_param_extras(spec: ParamSpec, raw: dict[str, Any], splits: dict[str, SplitSpec],
                        global_sites: dict[str, SiteSpec], own_sites: dict[str, SiteSpec], where: str) -> None:
    """The per-parameter options: a fused split, a head-block weight, a scaled embedding.

    What fits any rule is checked here; which rule takes which option, in the rule table.
    """
    name = f"{where}: {spec.name}"
    if spec.split is not None:
        if spec.split not in splits:
            raise ValueError(f"{name}: undefined split {spec.split!r}")
        if len(splits[spec.split].ratio) != len(spec.writes):
            raise ValueError(f"{name}: split {spec.split!r} has {len(splits[spec.split].ratio)} parts but the "
                             f"parameter writes {len(spec.writes)} spaces")
    if "head_block" in raw and not isinstance(raw["head_block"], bool):
        raise ValueError(f"{name}: head_block must be true or false")
    check_options(spec, lambda site: own_sites.get(site, global_sites.get(site)), name)


@cache
def all_architectures() -> tuple[ArchitectureSpec, ...]:
    """Every architecture spec shipped with the package, loaded and validated once."""
    folder = resources.files("theseus_ops.transport.architectures")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".json"))
    return tuple(parse_architecture(json.loads(p.read_text()), where=p.name) for p in files)


def supported_model_types() -> list[str]:
    return sorted(t for spec in all_architectures() for t in spec.model_types)


def architecture_for_model_type(model_type: str) -> ArchitectureSpec:
    """The architecture of a Hugging Face ``config.model_type``, or an error naming the supported ones."""
    for spec in all_architectures():
        if model_type in spec.model_types:
            return spec
    raise UnsupportedArchitectureError(
        f"unsupported architecture {model_type!r}; supported model types: {', '.join(supported_model_types())}"
    )


def same_architecture(source_type: str, target_type: str) -> ArchitectureSpec:
    """Both models' architecture; models of different architectures cannot share a transport."""
    source, target = architecture_for_model_type(source_type), architecture_for_model_type(target_type)
    if source.name != target.name:
        raise InputError(
            f"source and target are different families ({source.name} vs {target.name}); "  # asserted by tests
            "transport needs two models of one family"
        )
    return source
