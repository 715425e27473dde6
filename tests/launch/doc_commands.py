"""The launcher command lines a Markdown file documents, as a shell would run them.

Reads the fenced shell blocks (```bash, sh, shell, console) in document order, joins `\\`
continuations, keeps the variables the blocks assign (`T="--project=P ..."`; a file's blocks
are one shell session, so a later block may use an earlier block's `$T`), expands `$T` and
`${T}` in later lines, splits a line at `&&`, `||`, `;` and `|`, drops `# comments`, and
returns each `python launch/tpu.py ...` command with where it was written.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

SHELL_LANGUAGES = ("bash", "sh", "shell", "console", "zsh")
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([A-Za-z0-9_+-]*)")
ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
OPERATORS = ("&&", "||", ";", "|", "&", ";;", "(", ")")
LAUNCHER = "launch/tpu.py"


class DocCommandError(ValueError):
    """A documented launcher line that cannot be read as a command (e.g. an unset variable)."""


@dataclasses.dataclass(frozen=True)
class Command:
    file: str             # as given, e.g. "launch/README.md"
    block: int            # 1-based index among the file's shell blocks
    block_line: int       # line of the block's opening fence
    line: int             # line where the command starts
    text: str             # the logical line as written (continuations joined)
    argv: tuple[str, ...]  # the launcher's arguments (after launch/tpu.py), variables expanded

    @property
    def subcommand(self) -> str:
        return self.argv[0] if self.argv else ""

    def where(self) -> str:
        return (f"{self.file}, shell block {self.block} (opens at line {self.block_line}), "
                f"line {self.line}: {self.text}")


def shell_blocks(markdown: str) -> list[tuple[int, list[tuple[int, str]]]]:
    """[(fence line, [(line number, text), ...]), ...] of the shell blocks, 1-based lines."""
    blocks, current, fence, lines = [], None, "", markdown.splitlines()
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if fence:
            if match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                    and not match.group(2):
                if current is not None:
                    blocks.append(current)
                current, fence = None, ""
            elif current is not None:
                current[1].append((number, line))
        elif match:
            fence = match.group(1)
            if match.group(2).lower() in SHELL_LANGUAGES:
                current = (number, [])
    return blocks


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Joins lines ending in a backslash with the next; keeps the first line's number."""
    out, start, parts = [], None, []
    for number, text in lines:
        if start is None:
            start = number
        stripped = text.rstrip()
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].rstrip())
            continue
        parts.append(text.strip())
        out.append((start, " ".join(p.strip() for p in parts if p.strip())))
        start, parts = None, []
    if parts:
        out.append((start, " ".join(parts)))
    return out


def _words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _expand(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))
    return VARIABLE.sub(value, text)


def _simple_commands(words: list[str]) -> list[list[str]]:
    commands, current = [], []
    for word in words:
        if word in OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in [*commands, current] if c]


def launcher_commands(path: Path, name: str | None = None) -> list[Command]:
    """Every `python launch/tpu.py ...` command in the shell blocks of the Markdown at `path`
    (`name` labels it in messages). Raises DocCommandError for a launcher line that uses a
    variable no earlier line of the file assigns."""
    name = name or str(path)
    commands, variables = [], {}
    for block, (fence_line, lines) in enumerate(shell_blocks(path.read_text()), 1):
        for number, text in logical_lines(lines):
            expanded = _expand(text, variables)
            try:
                words = _words(expanded)
            except ValueError as error:  # unbalanced quotes: not ours unless it launches
                if LAUNCHER in text:
                    raise DocCommandError(f"{name}, shell block {block}, line {number}: "
                                          f"{error}: {text}") from None
                continue
            assignment = ASSIGNMENT.match(expanded)
            if assignment and len(words) == 1:  # T="..." (not `X=1 command ...`)
                variables[assignment.group(1)] = words[0].split("=", 1)[1]
                continue
            for simple in _simple_commands(words):
                while simple and ASSIGNMENT.match(simple[0]):   # `WORKDIR=... python ...`
                    simple = simple[1:]
                argv = _launcher_argv(simple)
                if argv is None:
                    continue
                command = Command(name, block, fence_line, number, text, tuple(argv))
                unset = [w for w in argv if VARIABLE.search(w)]
                if unset:
                    raise DocCommandError(f"{command.where()}\n  uses {', '.join(unset)}, "
                                          f"which no earlier line of {name} assigns")
                commands.append(command)
    return commands


def _launcher_argv(words: list[str]) -> list[str] | None:
    if len(words) >= 2 and re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", words[0]) \
            and words[1].endswith(LAUNCHER):
        return words[2:]
    if words and words[0].endswith(LAUNCHER):   # ./launch/tpu.py ... (it is executable)
        return words[1:]
    return None
