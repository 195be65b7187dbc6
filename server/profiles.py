"""Refinement profiles: named `latent` specs chosen by model id, for clients that can only
set `model` (evaluation harnesses, chat front ends, agent frameworks).

`--refinement-profile NAME=JSON` (repeatable), or `--refinement-profile FILE` for a JSON or
YAML file holding a mapping NAME -> spec, defines profiles; `parse_profiles` checks each
spec against the request schema (`server.protocol.LatentSpec`) at start-up, so a bad
profile stops the server instead of failing requests. `/v1/models` lists the base model
and `BASE:NAME` per profile. `resolve` maps a request's `model` to its profile: the base
id (or no model) means none, `BASE:NAME` a defined profile, anything else a 404 as for an
unknown model; the request's own `latent` fields then override the profile's one by one
(`merged_latent`). The server's maxima apply to the result like to any request.

This module knows model ids and specs only; routes call it (server/openai_routes.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from server.errors import APIError

SEPARATOR = ":"


def parse_profiles(entries: list[str]) -> dict[str, dict]:
    """NAME=JSON entries and file paths -> {name: latent spec dict}; ValueError naming the
    bad entry (an unknown field, a bad value, a name with ':' or '/')."""
    from server.protocol import LatentSpec

    raw: dict[str, object] = {}
    for entry in entries:
        name, eq, spec = entry.partition("=")
        if eq and not Path(entry).is_file():
            try:
                raw[name.strip()] = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise ValueError(f"profile {name!r}: not JSON ({exc})") from exc
            continue
        path = Path(entry)
        if not path.is_file():
            raise ValueError(f"{entry!r}: neither NAME=JSON nor a file")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
        if not isinstance(loaded, dict):
            raise ValueError(f"{entry}: a mapping of profile names to latent specs expected")
        raw.update(loaded)
    profiles = {}
    for name, spec in raw.items():
        if not name or any(c in name for c in SEPARATOR + "/ "):
            raise ValueError(f"profile name {name!r}: non-empty, without ':', '/' or spaces")
        if not isinstance(spec, dict):
            raise ValueError(f"profile {name!r}: a latent spec object expected")
        try:
            LatentSpec.model_validate(spec)
        except Exception as exc:  # pydantic's message names the field
            raise ValueError(f"profile {name!r}: {exc}") from exc
        profiles[name] = spec
    return profiles


def model_ids(base: str, profiles: dict[str, dict]) -> list[str]:
    """The ids `/v1/models` lists: the base model, then BASE:NAME per profile."""
    return [base, *(f"{base}{SEPARATOR}{name}" for name in profiles)]


def resolve(model: str | None, base: str, profiles: dict[str, dict]) -> dict | None:
    """The profile a request's `model` names (None: the base model); 404 otherwise."""
    if model is None or model == base:
        return None
    prefix = base + SEPARATOR
    if model.startswith(prefix) and model[len(prefix) :] in profiles:
        return profiles[model[len(prefix) :]]
    raise APIError(404, f"The model `{model}` does not exist.", param="model")


def merged_latent(profile: dict, given) -> object:
    """The request's `latent`: the profile's fields, each overridden by the request's own
    (`given`, a LatentSpec or None; only the fields it set count)."""
    from server.protocol import LatentSpec

    fields = dict(profile)
    if given is not None:
        fields |= {name: getattr(given, name) for name in given.model_fields_set}
        fields = {k: (v.model_dump() if hasattr(v, "model_dump") else v) for k, v in fields.items()}
    return LatentSpec.model_validate(fields)
