"""The configuration reference, ``docs/configuration.md``, generated from ``ServeSettings``.

    python -m crest.config_reference [OUT]     # make docs; OUT defaults to docs/configuration.md

Each setting's environment variable comes from the model's ``env_prefix`` and its flag from the
real ``crest serve`` parser, so the page cannot drift from the code;
``tests/deploy/test_config_reference.py`` fails when the committed page is stale.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from crest.cli import build_parser
from crest.service.settings import ServeSettings

DEFAULT_OUT = Path("docs/configuration.md")

# Variables read outside ServeSettings: (name, who reads it, what it is).
OTHER_VARIABLES = (
    ("CREST_TOKEN", "`crest health`, trainers (`crest.embedded.connect`)",
     "the coordinator's token, sent with every call unless given explicitly"),
    ("CREST_TLS_CA", "`crest health`, `crest jobs`",
     "PEM of the CA that signed the coordinator's certificate: probe it with TLS"),
    ("CREST_TLS_SERVER_NAME", "`crest health`, `crest jobs`",
     "the name the coordinator's certificate was issued to, when not the probed host"),
    ("CREST_CACHE_DIR", "`crest.workloads` (the examples' MNIST-1D)",
     "where generated datasets are cached; default `~/.cache/crest`"),
    ("RAY_AUTH_MODE", "every Ray process", "`token` turns Ray's token authentication on"),
    ("RAY_AUTH_TOKEN", "every Ray process",
     "the Ray cluster's token, the same on every node and the coordinator"),
)  # fmt: skip

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}


def env_var(settings: type[BaseSettings], name: str) -> str:
    """The environment variable of setting ``name`` (``port`` -> ``CREST_PORT``)."""
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def serve_flags() -> dict[str, str]:
    """Setting name -> its ``crest serve`` flag, read from the real parser."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {a.dest: a.option_strings[0] for a in serve._actions if a.option_strings and
            a.dest != "help"}  # fmt: skip


def type_name(field: FieldInfo) -> str:
    """A reader's name for a field's type, with its bounds (``integer, 0 to 65535``)."""
    annotation = field.annotation
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else annotation
    if typing.get_origin(annotation) is typing.Literal:
        name = "one of " + ", ".join(f"`{v}`" for v in typing.get_args(annotation))
    elif getattr(annotation, "__name__", "") == "SecretStr":
        name = "secret string"
    else:
        name = _TYPE_NAMES.get(annotation, str(annotation))  # type: ignore[arg-type]
    bounds = []
    for rule in field.metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(rule, attr, None) is not None:
                bounds.append(f"{word} {getattr(rule, attr)}")
    if bounds:
        name += f" ({', '.join(bounds)})"
    return name + (", optional" if optional else "")


def default_text(field: FieldInfo) -> str:
    return "unset" if field.default is None else f"`{field.default}`"


def cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def render() -> str:
    """The whole page, as ``docs/configuration.md`` holds it."""
    flags = serve_flags()
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated from ServeSettings (service/settings.py) by `make docs`"
        " (python -m crest.config_reference). Do not edit: tests/deploy fails when stale. -->",
        "",
        "`crest serve` (the coordinator and its dashboard) takes each setting from its flag,",
        "else from its environment variable, else the default. Containers set the environment",
        "variables: `docker-compose.yml` and `deploy/k8s/coordinator.yaml` (see",
        "[deployment.md](deployment.md)).",
        "",
        "| setting | environment variable | `crest serve` flag | type | default | description |",
        "|---|---|---|---|---|---|",
    ]
    for name, field in ServeSettings.model_fields.items():
        lines.append(
            f"| `{name}` | `{env_var(ServeSettings, name)}` | `{flags[name]}` | "
            f"{type_name(field)} | {default_text(field)} | {cell(field.description or '')} |"
        )
    lines += [
        "",
        "## Other environment variables",
        "",
        "| variable | read by | meaning |",
        "|---|---|---|",
        *(f"| `{name}` | {reader} | {meaning} |" for name, reader, meaning in OTHER_VARIABLES),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
