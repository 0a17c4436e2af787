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

# Sections in reading order: (TOML header as a user writes it, model).
SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("[agent]", AgentConfig),
    ("[site]", SiteConfig),
    *(section for plugin in DRIVERS.values() for section in plugin.sections),
    ("[devices.limits.SIGNAL]", SpecLimits),
    *(section for plugin in SINKS.values() for section in plugin.sections),
    ("[outbox]", OutboxConfig),
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
