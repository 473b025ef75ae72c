"""A small Dockerfile reader: enough to check what CI can check without a Docker engine
(instructions, stages, COPY sources, the final user and what the final stage installs)."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import pathlib
import re

# Every instruction of the Dockerfile reference (BuildKit, dockerfile:1).
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
    "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
}  # fmt: skip


class DockerfileError(ValueError):
    pass


@dataclasses.dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def flags(self) -> dict[str, str]:
        return dict(re.findall(r"--([a-z-]+)=(\S+)", self.args))

    def words(self) -> list[str]:
        """The arguments without --flags; exec (JSON) form or shell words."""
        text = self.args.strip()
        if text.startswith("["):
            return list(json.loads(text))
        return [w for w in text.split() if not w.startswith("--")]


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = dataclasses.field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclasses.dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse(text: str) -> Dockerfile:
    logical: list[tuple[int, str]] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue  # comments and parser directives
        if buf and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction are dropped
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append((start, buf + stripped))
        buf = ""
    if buf:
        raise DockerfileError(f"line {start}: the file ends inside a continued instruction")
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for number, line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword not in INSTRUCTIONS:
            raise DockerfileError(f"line {number}: unknown instruction {keyword}")
        ins = Instruction(number, keyword, args.strip())
        if keyword == "FROM":
            words = ins.words()
            base = _expand(words[0], global_args)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            if len(words) not in (1, 3):
                raise DockerfileError(f"line {number}: FROM image [AS name]")
            stages.append(Stage(base, name))
        elif not stages:
            if keyword != "ARG":
                raise DockerfileError(f"line {number}: {keyword} before the first FROM")
            key, _, value = ins.args.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append(ins)
    if not stages:
        raise DockerfileError("no FROM")
    return Dockerfile(global_args, stages)


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m[1] or m[2], m[0]), text)


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics: later patterns win; `!` re-includes; `**` spans folders."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(_match(p, pat) for p in prefixes):
            result = not negate
    return result


def _match(path: str, pattern: str) -> bool:
    if pattern == "**":
        return True
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return re.fullmatch(regex, path) is not None or fnmatch.fnmatch(path, pattern)


def read_ignore(path: pathlib.Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
