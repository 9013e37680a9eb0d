"""Kubernetes names of a model's deployment: the one rule shared with helm/vllm-deployment's _helpers.tpl.

Registry model names may hold "/", ":", "." and upper case (meta-llama/Llama-3.1-8B, qwen:7b); Kubernetes
names may not. The chart's `vllm.modelSlug` and `vllm.fullname` templates and these functions must agree
(tests/unit/test_helm_deployer.py renders the chart to check it).
"""

from __future__ import annotations

import re

from opsctl.deploy import TRACKS, DeployInputError

SERVICE_NAME_MAX = 63  # a DNS-1035 label
RELEASE_NAME_MAX = 53  # Helm's limit: it appends suffixes of its own to the names it derives

_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def kubernetes_name(model: str) -> str:
    """The model's DNS-1035 name: lower case, each run of other characters → "-", trimmed, "m-" before a digit.

    e.g. meta-llama/Llama-3.1-8B → meta-llama-llama-3-1-8b, 01-ai/Yi-34B → m-01-ai-yi-34b.

    Raises:
        DeployInputError: the name has no letter or digit to keep.
    """
    slug = _NOT_ALNUM.sub("-", model.lower()).strip("-")
    if not slug:
        raise DeployInputError(f"model name {model!r} has no letters or digits to name Kubernetes objects after",
                               param="model")
    return slug if slug[0].isalpha() else f"m-{slug}"


def service_name(model: str, env: str, *, name_suffix: str = "", kubernetes_name_override: str = "") -> str:
    """The Service the chart creates for `model` in `env`: {model}-{env}[-{nameSuffix}], the model part cut
    to fit 63 characters (the chart's `vllm.fullname`; `model.kubernetesName` replaces the derived name)."""
    suffix = f"-{env}" + (f"-{name_suffix}" if name_suffix else "")
    model_part = kubernetes_name_override or kubernetes_name(model)
    return model_part[:SERVICE_NAME_MAX - len(suffix)].rstrip("-") + suffix


def check_track(track: str) -> str:
    """`track` if it is one of TRACKS.

    Raises:
        DeployInputError: any other name.
    """
    if track not in TRACKS:
        raise DeployInputError(f"unknown track {track!r}: expected one of {', '.join(TRACKS)}", param="track")
    return track


def release_name(model: str, env: str, track: str = "stable") -> str:
    """The release of `model` in `env`: {model}-{env} (the stable track; the same name as its Service, so one
    name finds both), or {model}-{env}-canary for the canary that a rollout deploys beside it (the chart's
    `nameSuffix: canary` gives its Service the same name).

    Never shortened: two long model names cut to the same prefix would share (and overwrite) one release.

    Raises:
        DeployInputError: no usable characters, an unknown track, or longer than Helm's 53.
    """
    suffix = "" if check_track(track) == "stable" else f"-{track}"
    name = f"{kubernetes_name(model)}-{env}{suffix}"
    if len(name) > RELEASE_NAME_MAX:
        raise DeployInputError(
            f"model name {model!r} makes the release name {name!r} ({len(name)} characters); Helm allows "
            f"{RELEASE_NAME_MAX}", param="model")
    return name
