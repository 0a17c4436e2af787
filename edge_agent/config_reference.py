"""Render the configuration reference (docs/configuration.md) from the config models' field docstrings."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from edge_agent.config import AgentConfig, OutboxConfig, SiteConfig
from edge_agent.config_model import DeviceBase, SpecLimits
from edge_agent.drivers.registry import DRIVERS
from edge_agent.sinks.registry import SINKS
from edge_agent.web.config import WebConfig

# Sections in reading order: (TOML header as a user writes it, model).
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("[agent]", AgentConfig),
    ("[site]", SiteConfig),
    *(section for plugin in DRIVERS.values() for section in plugin.sections),
    ("[devices.limits.SIGNAL]", SpecLimits),
    *(section for plugin in SINKS.values() for section in plugin.sections),
    ("[outbox]", OutboxConfig),
    ("[web]", WebConfig),
]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _type_name(typing.get_args(annotation)[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, dict, tuple):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(annotation))}]"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            return "table"
        return {
            "str": "string",
            "float": "number",
            "int": "integer",
            "bool": "boolean",
            "Path": "path",
            "SecretStr": "secret `${ENV}`",
        }.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(info: Any) -> str:
    if info.default is PydanticUndefined and info.default_factory is None:
        return "**required**"
    if info.default is PydanticUndefined:
        return ""  # a table or list built by a factory: its own keys carry the defaults
    value = info.default
    return f"`{value}`" if value is not None else ""


def render() -> str:
    """The whole reference as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the field docstrings in `edge_agent/config.py` by",
        "`python -m edge_agent.config_reference > docs/configuration.md`; a test keeps it current.",
        "Unknown keys are errors. Secrets are written as `${ENV_NAME}` and never printed.",
        "",
        "## Checking a config in the editor",
        "",
        "`edge-agent schema > edge-agent.schema.json` writes the JSON Schema (draft 7) of this file, with the",
        "descriptions below. Editors that use Taplo (the Even Better TOML extension of VS Code, `taplo lsp` in",
        "others) then complete keys, show these descriptions and underline unknown keys and wrong types as",
        "you type. Point a config at the schema with a directive on its first line (the path is relative to",
        "the config file):",
        "",
        "```toml",
        "#:schema ./edge-agent.schema.json",
        "```",
        "",
        "or point every config at it with a `.taplo.toml` in the folder the editor opens (here the configs",
        "named `agent*.toml`; equipment profiles are other files, which this schema does not describe):",
        "",
        "```toml",
        "[[rule]]",
        'include = ["**/agent*.toml"]',
        "[rule.schema]",
        'path = "./edge-agent.schema.json"',
        "```",
        "",
        "Write the schema again after upgrading the agent. What needs more than one key or the files around",
        "(profiles, certificate files, unique names, addresses below `address_base`) is checked by",
        "`edge-agent check-config`, which also prints warnings: a config without a sink, profile signals",
        "that no tag of a device provides.",
        "",
    ]
    for header, model in SECTIONS:
        out += [
            f"## `{header}`",
            "",
            (model.__doc__ or "").strip().splitlines()[0],
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for name, info in model.model_fields.items():
            if name == "protocol" and issubclass(model, DeviceBase):
                continue  # the section title says it
            key = info.alias or name
            doc = " ".join((info.description or "").split())
            out.append(f"| `{key}` | {_type_name(info.annotation)} | {_default(info)} | {doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
