"""Parsing the repository's Dockerfile and .dockerignore, the subset of the syntax it uses (pure).

Instructions: ARG, FROM [AS], RUN [--mount=type=bind,from=,source=,target=], WORKDIR, COPY,
ENV, LABEL, USER, EXPOSE, CMD, ENTRYPOINT. Anything else is refused, so the image built here
can never silently differ from what `docker build` makes of the same file.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

SUPPORTED = {"ARG", "FROM", "RUN", "WORKDIR", "COPY", "ENV", "LABEL", "USER", "EXPOSE", "CMD", "ENTRYPOINT"}


class DockerfileError(ValueError):
    """The Dockerfile uses something this builder does not implement."""


@dataclass(frozen=True, slots=True)
class Instruction:
    keyword: str
    args: str  # the rest of the (joined) line, variables not yet expanded
    line: int


@dataclass
class Stage:
    base: str  # image reference or the name of an earlier stage
    name: str
    instructions: list[Instruction] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BindMount:
    source_stage: str
    source: str
    target: str


def _logical_lines(text: str) -> list[tuple[int, str]]:
    lines: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped (as Docker does)
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        lines.append((start, buf + stripped))
        buf = ""
    if buf:
        lines.append((start, buf))
    return lines


def expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), ""), value
    )


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, content in _logical_lines(text):
        keyword, _, rest = content.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword not in SUPPORTED:
            raise DockerfileError(f"Dockerfile line {line}: {keyword} is not supported by the local image builder")
        if keyword == "FROM":
            words = rest.split()
            base = expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(base, name))
        elif keyword == "ARG" and not stages:
            key, _, default = rest.partition("=")
            global_args[key] = default
        elif not stages:
            raise DockerfileError(f"Dockerfile line {line}: {keyword} before FROM")
        else:
            stages[-1].instructions.append(Instruction(keyword, rest, line))
    if not stages:
        raise DockerfileError("Dockerfile has no FROM")
    return global_args, stages


def key_values(args: str) -> dict[str, str]:
    """`ENV a=1 b="x y"` / `LABEL k="v"` -> dict (the `ENV key value` form too)."""
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    out = {}
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            raise DockerfileError(f"expected key=value, got {word!r}")
        out[key] = value
    return out


def exec_form(args: str) -> list[str]:
    """CMD/ENTRYPOINT: the JSON (exec) form as a list, the shell form wrapped in /bin/sh -c."""
    if args.startswith("["):
        value = json.loads(args)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DockerfileError(f"bad exec form: {args}")
        return [str(v) for v in value]
    return ["/bin/sh", "-c", args]


def split_run(args: str) -> tuple[list[BindMount], str]:
    """RUN flags (only bind mounts from another stage) and the shell command."""
    mounts: list[BindMount] = []
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        rest = rest.lstrip()
        if not flag.startswith("--mount="):
            raise DockerfileError(f"RUN flag {flag} is not supported")
        opts = dict(kv.split("=", 1) for kv in flag.removeprefix("--mount=").split(","))
        if opts.get("type") != "bind" or "from" not in opts:
            raise DockerfileError(f"RUN {flag}: only type=bind,from=<stage> mounts are supported")
        mounts.append(BindMount(opts["from"], opts.get("source", "/"), opts["target"]))
    return mounts, rest


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    rules: tuple[tuple[bool, re.Pattern[str]], ...]  # (negated, pattern), in file order

    def excluded(self, path: str) -> bool:
        """Docker's rule: the last pattern matching the path or one of its parent directories wins."""
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negated, regex in self.rules:
            if any(regex.match(p) for p in prefixes):
                result = not negated
        return result


def parse_dockerignore(text: str) -> IgnoreRules:
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))
    return IgnoreRules(tuple(rules))
