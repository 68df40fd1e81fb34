"""Command-line flags generated from `EngineConfig`'s fields: one flag per field (with the
aliases vLLM's and SGLang's users type), `--config FILE`, and back from a config to flags."""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any

from engine.config import FIELDS, EngineConfig, read_config_file


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def negative_flag(name: str) -> str:
    """The flag that sets a bool field to False (argparse's BooleanOptionalAction spelling)."""
    return "--no-" + flag_name(name)[2:]


def _parse_optional(kind: type):
    def parse(text: str):
        return None if text.lower() in ("none", "auto", "") else kind(text)

    return parse


_TYPES = {"int": int, "float": float, "str": str}


def add_config_flags(
    parser: argparse.ArgumentParser,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    title: str | None = None,
) -> None:
    """One flag per EngineConfig field (with its aliases), plus --config FILE. Flags default to
    'not given', so a config file and the dataclass defaults fill what the command line omits.
    `skip`: flag names the parser uses otherwise; `only`: just these fields (no --config; their
    flags default to the fields' defaults, so the caller reads them off the namespace)."""
    group = parser.add_argument_group(title or "engine and cache options (EngineConfig)")
    if only is None:
        group.add_argument(
            "--config",
            metavar="FILE",
            help="YAML or JSON file of these options (flags override it)",
        )
    default = EngineConfig()
    for f in fields(EngineConfig):
        if only is not None and f.name not in only:
            continue
        names = [n for n in (flag_name(f.name), *f.metadata["aliases"]) if n not in skip]
        if not names:
            continue
        shown = getattr(default, f.name)
        help_text = f.metadata["help"]
        if "default:" not in help_text:
            help_text += (
                f" (default: {shown!r})" if isinstance(shown, str) else f" (default: {shown})"
            )
        # a subset (`only`) is read off the namespace directly: its flags default to the field's
        given = argparse.SUPPRESS if only is None else shown
        kw: dict[str, Any] = {"dest": f.name, "default": given, "help": help_text}
        if f.type == "bool":
            group.add_argument(*names, action=argparse.BooleanOptionalAction, **kw)
            for neg in f.metadata["negative"]:
                group.add_argument(
                    neg,
                    dest=f.name,
                    action="store_false",
                    default=argparse.SUPPRESS,
                    help=f"same as {negative_flag(f.name)}",
                )
            continue
        base = f.type.split(" | ")[0]
        kind = _TYPES[base]
        optional = "None" in f.type
        group.add_argument(*names, type=_parse_optional(kind) if optional else kind, **kw)


def config_from_args(args: argparse.Namespace, **overrides: Any) -> EngineConfig:
    """The EngineConfig the parsed flags describe: --config file, then flags, then overrides."""
    values = read_config_file(args.config) if getattr(args, "config", None) else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS})
    values.update(overrides)
    return EngineConfig(**values)


def config_to_flags(config: EngineConfig) -> list[str]:
    """The command line that rebuilds `config` (only fields that differ from the defaults)."""
    default, out = EngineConfig(), []
    for f in fields(EngineConfig):
        v = getattr(config, f.name)
        if v == getattr(default, f.name):
            continue
        if isinstance(v, bool):
            out.append(flag_name(f.name) if v else negative_flag(f.name))
        else:
            out += [flag_name(f.name), "none" if v is None else str(v)]
    return out
