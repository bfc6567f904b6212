"""The settings reference (``docs/config.md``), rendered from the dataclasses so it cannot drift:
every section's keys with their type, default, CLI flag and help text."""

from __future__ import annotations

from facefleet.config.fields import config_fields, field_type
from facefleet.config.flags import flag_name
from facefleet.config.loading import __doc__ as LOADING_DOC
from facefleet.config.sections import SECTIONS, JobConfig


def _type(cls: type, name: str) -> str:
    ft = field_type(cls, name)
    text = {int: "integer", float: "number", str: "string", bool: "boolean"}.get(ft.base, "table")
    if ft.sequence:
        text = f"list of {text}s"
    return f"{text} or unset" if ft.optional else text


def _default(v: object) -> str:
    if v is None:
        return "unset"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, tuple):
        return "[" + ", ".join(f'"{x}"' for x in v) + "]"
    return f'"{v}"' if isinstance(v, str) else str(v)


def markdown() -> str:
    """The reference as Markdown."""
    example = (LOADING_DOC or "").split("::", 1)[1].rstrip() if "::" in (LOADING_DOC or "") else ""
    lines = [
        "# Settings",
        "",
        "Generated from `facefleet.config` (`python -m facefleet.config.reference > docs/config.md`).",
        "Every setting is a key of a TOML file given with `--config FILE` and a flag of `facefleet run`",
        "(flags override the file, which overrides the defaults). Unknown keys and invalid values are",
        'errors that name the key. `[gpu."NAME"]` tables hold `[gpu]` keys for the GPUs whose name',
        "contains NAME.",
        "",
        "```toml",
        *[ln[4:] if ln.startswith("    ") else ln for ln in example.strip("\n").splitlines()],
        "```",
    ]
    for title, cls in (("top level", JobConfig), *((f"[{k}]", c) for k, c in SECTIONS.items())):
        section = "" if cls is JobConfig else title.strip("[]")
        doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
        lines += ["", f"## {title}", "", doc, ""]
        lines += ["| key | type | default | flag | |", "|---|---|---|---|---|"]
        for f in config_fields(cls):
            key = f"{section}.{f.name}" if section else f.name
            flag = f"`{flag_name(key)}`" if f.metadata["cli"] else ""
            help_text = f.metadata["help"].replace("|", "\\|")
            lines.append(
                f"| `{f.name}` | {_type(cls, f.name)} | `{_default(f.default)}` | {flag} | {help_text} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
