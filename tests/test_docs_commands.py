"""The docs teach only commands that exist.

Every ``pneumo ...`` command line shown in README.md, deploy/JETSON.md and deploy/WATCH.md (fenced and
indented code blocks, inline code spans, commands quoted in code comments), every ``pneumo`` call in the
Makefile's recipes (as ``make -n`` expands them) and the systemd unit's ``ExecStart=`` is checked against
the parsers the CLI really builds: ``pneumo_cli.main`` runs with ``ArgumentParser.parse_known_args``
replaced by a stop, so the real dispatch (``pneumo train sweep``, ``pneumo edge watch``, ``pneumo bench
watch``) hands over the parser it would use, and nothing runs. Each subcommand must exist, each flag must
be one that parser accepts, and a literal value of a flag with ``choices`` must be one of them. ``make``
targets and variables the docs name must be in the Makefile, ``make X  # = CMD`` must be what ``make -n X``
runs, the systemd unit must pass ``systemd-analyze verify``, and WATCH.md's example ``watch.toml`` must
load with the daemon's own config loader.

A line that names a ``pneumo`` command the extractor cannot read is never dropped: it must be in
``UNCHECKABLE`` (with the reason), and an entry no longer needed fails too.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NoReturn
from unittest import mock

import pytest

from edge_runtime import pneumo_cli

REPO = Path(__file__).resolve().parents[1]
MARKDOWN_DOCS = ("README.md", "deploy/JETSON.md", "deploy/WATCH.md")
MAKEFILE = "Makefile"
UNIT = "deploy/pneumo-watch.service"
HAS_MAKE = shutil.which("make") is not None
#: fenced blocks read as shell; any other language (toml, json, text, none) is read as prose, where only a
#: command quoted in it ('pneumo ...', `pneumo ...`, (pneumo ...), "= pneumo ...") is taken
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", "zsh"})

#: (file, the line's code as the extractor sees it) -> why it cannot be checked. Keep it small: a line
#: belongs here only when no reading of it is a command line (e.g. prose naming a command in passing).
UNCHECKABLE: dict[tuple[str, str], str] = {
    ("README.md", "make install # .venv with pneumo and the train, dev, bench, dicom extras"): (
        "a comment naming the program ('pneumo and the ... extras'), not a command line"
    ),
}

# A ``pneumo`` command word (also as a path: /opt/pneumo/venv/bin/pneumo) followed by a subcommand; not
# the service user in ``-o pneumo -g``, ``video pneumo`` or ``/etc/pneumo/``.
PNEUMO_MENTION = re.compile(r"(?<![\w.$/~-])(?:[\w.$(){}/~-]*/)?pneumo(?=\s+[a-z])")
PLACEHOLDER = re.compile(r"^(?:\.\.\.|[A-Z][A-Z0-9_]*(?:\.\.\.)?|<[^>]*>)$")
NEGATIVE_NUMBER = re.compile(r"^-\d+(?:\.\d*)?$")
#: ``[--layout split|flat]``: optional notation of the docs; the alternatives are kept apart by ALT
OPTIONAL = re.compile(r"\[(-[^\[\]]*)\]")
ALT = "\x1f"
SHELL_KEYWORDS = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"}
)
#: programs that run the next word as the command -> their options that take a value
WRAPPERS: dict[str, frozenset[str]] = {
    "sudo": frozenset({"-u", "-g", "-C", "-h", "-p"}),
    **{name: frozenset() for name in ("env", "exec", "time", "nohup", "command")},
}


# ----------------------------------------------------------------------------- what the docs show


@dataclass(frozen=True)
class Line:
    """One logical line of code in a file (continuations joined): where it starts, and how to read it."""

    file: str
    number: int
    text: str
    kind: Literal["shell", "prose"]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.number}"


@dataclass(frozen=True)
class Invocation:
    """One simple command of a line: ``pneumo``, ``make`` or ``python -m``, with its arguments."""

    line: Line
    program: str
    args: tuple[str, ...]
    comment: str = ""

    def shown(self) -> str:
        return " ".join([self.program, *self.args]).replace(ALT, "|")


@dataclass
class Extracted:
    """What the extractor read in some lines: the commands, and the lines it could not read."""

    invocations: list[Invocation] = field(default_factory=list)
    uncheckable: dict[tuple[str, str], str] = field(default_factory=dict)

    def pneumo(self) -> list[Invocation]:
        return [inv for inv in self.invocations if inv.program == "pneumo"]


def markdown_lines(file: str, text: str) -> list[Line]:
    """Code blocks (fenced, indented) line by line, then the inline code spans of the rest."""
    lines = text.split("\n")
    prose = [""] * len(lines)
    found: list[Line] = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if fence:
            end = i + 1
            while end < len(lines) and not lines[end].strip().startswith(fence.group(1)):
                end += 1
            kind: Literal["shell", "prose"] = (
                "shell" if fence.group(2).lower() in SHELL_LANGUAGES else "prose"
            )
            found += code_lines(file, i + 2, lines[i + 1 : end], kind)
            i = end + 1
        elif lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            end = i
            while end < len(lines) and (lines[end].startswith("    ") or not lines[end].strip()):
                end += 1
            found += code_lines(file, i + 1, [line[4:] for line in lines[i:end]], "shell")
            i = end
        else:
            prose[i] = lines[i]
            i += 1
    return found + inline_spans(file, "\n".join(prose))


def code_lines(file: str, first: int, body: Sequence[str], kind: Literal["shell", "prose"]) -> list[Line]:
    """Logical lines of a code block: a shell line ending in a backslash goes on on the next one."""
    found: list[Line] = []
    start, parts = first, list[str]()
    for number, text in enumerate(body, start=first):
        if not parts:
            start = number
        if kind == "shell" and text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1])
            continue
        parts.append(text)
        joined = " ".join(part.strip() for part in parts)
        if joined:
            found.append(Line(file, start, joined, kind))
        parts = []
    if parts:
        found.append(Line(file, start, " ".join(part.strip() for part in parts), kind))
    return found


def inline_spans(file: str, prose: str) -> list[Line]:
    """Single-backtick code spans (they may wrap onto the next line), read as shell."""
    found = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        if "\n\n" in match.group(1):
            continue
        number = prose.count("\n", 0, match.start()) + 1
        found.append(Line(file, number, " ".join(match.group(1).split()), "shell"))
    return found


def extract(lines: Sequence[Line]) -> Extracted:
    result = Extracted()
    for line in lines:
        invocations, problem = read_line(line)
        result.invocations += invocations
        if problem:
            result.uncheckable[(line.file, " ".join(line.text.split()))] = (
                f"{line.where}: {problem}: {line.text}"
            )
    return result


def read_line(line: Line) -> tuple[list[Invocation], str | None]:
    """The commands of one line, and why not all of its ``pneumo`` commands could be read (or None)."""
    if line.kind == "shell":
        code, comment = split_comment(line.text)
        try:
            commands = simple_commands(code)
        except ValueError:  # unbalanced quotes: prose in a code block; only quoted commands are read
            invocations = prose_invocations(line, line.text)
        else:
            invocations = [inv for cmd in commands if (inv := invocation(line, cmd, comment))]
            invocations += prose_invocations(line, comment)
    else:
        invocations = prose_invocations(line, line.text)
    missed = len(PNEUMO_MENTION.findall(line.text)) - sum(inv.program == "pneumo" for inv in invocations)
    return invocations, (f"{missed} pneumo command(s) the extractor cannot read" if missed > 0 else None)


def split_comment(text: str) -> tuple[str, str]:
    """``code  # comment`` -> (code, comment); a ``#`` inside quotes or a word is not a comment."""
    quote = ""
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i], text[i + 1 :].strip()
    return text, ""


def prose_invocations(line: Line, text: str) -> list[Invocation]:
    """Commands quoted in prose: 'pneumo ...', `pneumo ...`, (pneumo ...), or after '=' or ':'."""
    found: list[Invocation] = []
    for match in PNEUMO_MENTION.finditer(text):
        before = text[: match.start()].rstrip()
        opener = text[match.start() - 1] if match.start() else ""
        if opener and opener in "'\"`(":
            end = text.find(")" if opener == "(" else opener, match.start())
            if end < 0:
                continue
            quoted = text[match.start() : end]
        elif before.endswith(("=", ":")):
            quoted = text[match.start() :]
        else:
            continue
        with contextlib.suppress(ValueError):
            sub = Line(line.file, line.number, quoted, "shell")
            found += [inv for cmd in simple_commands(quoted) if (inv := invocation(sub, cmd, ""))]
    return found


def simple_commands(code: str) -> list[list[str]]:
    """Shell code -> its simple commands (split at ; && || | & ( ), redirections dropped)."""
    code = OPTIONAL.sub(lambda m: m.group(1).replace("|", ALT), code)
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token and set(token) <= set("<>&") and set(token) & set("<>"):  # a redirection and its target
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()
            i += 2
            continue
        if token and set(token) <= set(";&|()"):
            commands.append([])
        else:
            commands[-1].append(token)
        i += 1
    return [cmd for cmd in commands if cmd]


def invocation(line: Line, words: Sequence[str], comment: str) -> Invocation | None:
    """A simple command -> an Invocation of pneumo, make or ``python -m``; None for any other program."""
    words = list(words)
    while words:
        if words[0] in SHELL_KEYWORDS or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value
            words.pop(0)
        elif words[0] in WRAPPERS:
            takes_value = WRAPPERS[words.pop(0)]
            while words and words[0].startswith("-"):
                del words[: 2 if words[0] in takes_value else 1]
        else:
            break
    if not words or words[0] in ("for", "case", "[", "test"):
        return None
    program = Path(words[0]).name
    if program == "pneumo" and len(words) > 1:  # a bare `pneumo` names the program (or the user)
        return Invocation(line, "pneumo", tuple(words[1:]), comment)
    if program == "make":
        return Invocation(line, "make", tuple(words[1:]), comment)
    if re.fullmatch(r"python[\d.]*", program) and words[1:2] == ["-m"] and len(words) > 2:
        return Invocation(line, "python -m", tuple(words[2:]), comment)
    return None


# ----------------------------------------------------------------------------- the real parsers


class ParserReached(BaseException):
    """Not an error: how the stopped ``parse_known_args`` hands its parser back (past every ``except``)."""

    def __init__(self, parser: argparse.ArgumentParser, args: list[str]) -> None:
        super().__init__(parser.prog)
        self.parser = parser
        self.argv = args


class Unreachable(Exception):
    """The CLI did not reach a parser for this command line."""


def reach_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser ``pneumo ARGV`` would parse with, and the arguments it would get; nothing runs."""

    def stop(
        self: argparse.ArgumentParser, args: Sequence[str] | None = None, namespace: Any = None
    ) -> NoReturn:
        if args is None:
            raise AssertionError(f"{self.prog} parses sys.argv, not the argv it was given")
        raise ParserReached(self, list(args))

    err = io.StringIO()
    with (
        mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop),
        mock.patch.dict(os.environ),  # export's main sets TF_CPP_MIN_LOG_LEVEL
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(err),
    ):
        try:
            code = pneumo_cli.main(list(argv))
        except ParserReached as reached:
            return reached.parser, reached.argv
    raise Unreachable(f"exit status {code} before any parser: {err.getvalue().strip()}")


def check_pneumo(args: Sequence[str]) -> list[str]:
    """What is wrong with ``pneumo ARGS`` for the CLI as built: [] when every part exists."""
    if not args or args[0] in ("-h", "--help", "help", "-V", "--version"):
        return []
    if args[0] not in pneumo_cli.SUBCOMMANDS:
        return [f"unknown command {args[0]!r}; pneumo has: {', '.join(pneumo_cli.SUBCOMMANDS)}"]
    try:  # dispatch sees one alternative of [--flag a|b]; the walk below checks every one
        parser, rest = reach_parser([a.split(ALT)[0] for a in args])
    except Unreachable as exc:
        return [str(exc)]
    return check_arguments(parser, args[len(args) - len(rest) :])  # the dispatch took a prefix


def subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction[Any] | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def positional_room(parser: argparse.ArgumentParser) -> float:
    """How many positional arguments the parser takes at most."""
    room = 0.0
    for action in parser._actions:
        if action.option_strings or isinstance(action, argparse._SubParsersAction):
            continue
        nargs = action.nargs
        room += nargs if isinstance(nargs, int) else 1 if nargs in (None, "?") else float("inf")
    return room


def is_option(token: str) -> bool:
    return token.startswith("-") and token != "-" and not NEGATIVE_NUMBER.match(token)


def check_arguments(parser: argparse.ArgumentParser, tokens: Sequence[str]) -> list[str]:
    """Walk the tokens as argparse would: subcommands chosen, flags looked up, values of choices checked."""
    problems: list[str] = []
    positionals, lost, only_positionals = 0, False, False
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--" and not only_positionals:
            only_positionals = True
        elif is_option(token) and not only_positionals:
            action, flag, attached, problem = find_option(parser, token)
            if problem:
                problems.append(problem)
            if action is None:
                lost = True  # its values cannot be told from positionals any more
                continue
            values, i, problem = take_values(action, flag, attached, tokens, i)
            problems += [problem] if problem else []
            problems += check_values(parser, action, flag, values)
        elif (sub := subcommands(parser)) is not None:
            if token not in sub.choices:
                return [
                    *problems,
                    f"'{parser.prog}' has no subcommand {token!r}; it has: {', '.join(sub.choices)}",
                ]
            parser, positionals, lost = sub.choices[token], 0, False
        elif not token.endswith("..."):  # RUN... and ... stand for any number of arguments
            positionals += 1
            if positionals > positional_room(parser) and not lost:
                problems.append(f"'{parser.prog}' takes no further positional argument, got {token!r}")
                lost = True
    return problems


def find_option(
    parser: argparse.ArgumentParser, token: str
) -> tuple[argparse.Action | None, str, str | None, str | None]:
    """(action, flag, value attached to the token, problem) for one option token."""
    options = parser._option_string_actions
    flag, attached = token, None
    if token.startswith("--") and "=" in token:
        flag, attached = token.split("=", 1)
    if flag in options:
        return options[flag], flag, attached, None
    if not token.startswith("--") and token[:2] in options and options[token[:2]].nargs != 0:
        return options[token[:2]], token[:2], token[2:], None  # -oFILE
    longer = [o for o in options if o.startswith(flag) and flag.startswith("--")]
    if len(longer) == 1:
        return options[longer[0]], longer[0], attached, f"{flag} abbreviates {longer[0]}: spell the flag out"
    near = difflib.get_close_matches(flag, list(options), n=3)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    return None, flag, attached, f"'{parser.prog}' has no option {flag}{hint}"


def take_values(
    action: argparse.Action, flag: str, attached: str | None, tokens: Sequence[str], i: int
) -> tuple[list[str], int, str | None]:
    """The values the flag consumes from ``tokens[i:]``: (values, next index, problem)."""
    nargs = action.nargs
    if nargs == 0:
        return [], i, (f"{flag} takes no value, got {attached!r}" if attached is not None else None)
    if attached is not None:
        return [attached], i, None
    if nargs == argparse.REMAINDER:
        return list(tokens[i:]), len(tokens), None
    if nargs in (None, "?") or isinstance(nargs, int):
        count = 1 if nargs in (None, "?") else int(nargs)  # type: ignore[call-overload]
        values = list(tokens[i : i + count])
        values = values[: next((k for k, v in enumerate(values) if is_option(v)), len(values))]
        missing = nargs != "?" and len(values) < count
        return values, i + len(values), (f"{flag} expects a value" if missing else None)
    end = next((k for k in range(i, len(tokens)) if is_option(tokens[k])), len(tokens))
    return list(tokens[i:end]), end, (f"{flag} expects a value" if nargs == "+" and end == i else None)


def check_values(
    parser: argparse.ArgumentParser, action: argparse.Action, flag: str, values: list[str]
) -> list[str]:
    """A literal value must convert (int, float) and be one of the flag's choices, where it has them."""
    problems = []
    for value in (alt for v in values for alt in v.split(ALT)):
        if "$" in value or PLACEHOLDER.match(value):
            continue
        if action.type in (int, float) or (action.choices is not None and callable(action.type)):
            try:
                converted: object = action.type(value)  # type: ignore[misc]
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                problems.append(f"'{parser.prog}' {flag}: {value!r} is not a valid value ({exc})")
                continue
        else:
            converted = value
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(str, action.choices))
            problems.append(f"'{parser.prog}' {flag}: {value!r} is not one of its choices ({choices})")
    return problems


def check_python_module(args: Sequence[str]) -> list[str]:
    """``python -m MODULE``: a module of this project must exist (a third-party one is not ours)."""
    module = args[0]
    if module.split(".")[0] not in project_packages():
        return []
    path = REPO.joinpath(*module.split("."))
    if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
        return [f"no module {module} in this project"]
    return []


def project_packages() -> set[str]:
    """The packages pyproject.toml installs (``[tool.setuptools.packages.find] include``)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10 (JetPack 6): tomli is a dependency there
        import tomli as tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {name.rstrip("*") for name in project["tool"]["setuptools"]["packages"]["find"]["include"]}


# ----------------------------------------------------------------------------- make


@dataclass(frozen=True)
class Makefile:
    text: str

    def lines(self) -> list[str]:
        return self.text.split("\n")

    def targets(self) -> dict[str, int]:
        """Rule targets -> the line of their rule."""
        found: dict[str, int] = {}
        for number, line in enumerate(self.lines(), start=1):
            rule = re.match(r"^([^\s#=:][^=:]*?)\s*::?(?!=)", line)
            if rule and not line.startswith("\t"):
                for target in rule.group(1).split():
                    found.setdefault(target, number)
        return found

    def variables(self) -> dict[str, str]:
        """Variables the Makefile sets -> their default."""
        pattern = re.compile(
            r"^(?:override\s+|export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*(?:\?|::|:|\+)?=\s*(.*)$"
        )
        return {m.group(1): m.group(2) for line in self.lines() if (m := pattern.match(line))}

    def commands_targets(self) -> list[str]:
        return [t for t in self.targets() if not re.search(r"[$/%]", t) and not t.startswith(".")]


def make_dry_run(target: str, makefile: Makefile) -> str:
    """``make -n -B TARGET``: every recipe it would run, up to date or not, and every variable that is
    empty by default set, so that each ``$(if ...)`` shows its flags."""
    empty = [f"{name}=1" for name, default in makefile.variables().items() if not default.strip()]
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(
        ["make", "-n", "-B", "--no-print-directory", "-f", "-", target, *empty],
        input=makefile.text,  # the text given (a test's broken copy), read in the checkout
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"make -n {target} failed: {done.stderr}"
    return done.stdout


def makefile_extracted(makefile: Makefile) -> Extracted:
    """The recipes as ``make -n`` expands them, each pneumo call numbered by its Makefile line.

    A recipe shared through a prerequisite (install) is read once, under the first target that runs it.
    """
    result, seen = Extracted(), set()
    lines = makefile.lines()
    for target in makefile.commands_targets():
        rule_line = after = makefile.targets()[target]
        dry_run = code_lines(MAKEFILE, rule_line, make_dry_run(target, makefile).split("\n"), "shell")
        part = extract([Line(MAKEFILE, rule_line, line.text, "shell") for line in dry_run])
        for inv in part.invocations:
            if (inv.program, inv.args) in seen:
                continue
            seen.add((inv.program, inv.args))
            if inv.program == "pneumo":  # the Makefile line this call starts on, searched in order
                after = source_line(lines, after, inv.args) or rule_line
                inv = replace(inv, line=replace(inv.line, number=after))
            result.invocations.append(inv)
        result.uncheckable.update(part.uncheckable)
    usage = [  # the usage comment: '#   make TARGET [VAR=x]  what it does'
        Line(MAKEFILE, number, match.group(1), "shell")
        for number, text in enumerate(lines, start=1)
        if (match := re.match(r"^#\s+(make\s+[\w.-]+(?:\s+[A-Za-z_]\w*=\S*)*)", text))
    ]
    more = extract(usage)
    result.invocations += more.invocations
    result.uncheckable.update(more.uncheckable)
    return result


def source_line(lines: Sequence[str], start: int, args: Sequence[str]) -> int | None:
    """The first line from ``start`` on holding ``pneumo ARGS`` (as many leading args as match)."""
    for count in range(min(len(args), 3), 0, -1):
        needle = " ".join(["pneumo", *args[:count]])
        found = next((n for n in range(start, len(lines) + 1) if needle in lines[n - 1]), None)
        if found:
            return found
    return None


def normalised(words: Sequence[str]) -> tuple[str, ...]:
    """A command for comparison: the program's basename, python3 -> python (after VAR=value words)."""
    env = list(itertools.takewhile(lambda w: re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w), words))
    rest = words[len(env) :]
    if not rest:
        return tuple(env)
    program = re.sub(r"^python[\d.]*$", "python", Path(rest[0]).name)
    return (*env, program, *rest[1:])


def check_make(inv: Invocation, makefile: Makefile) -> list[str]:
    """Targets and variables must be the Makefile's; ``make X  # = CMD`` must be what ``make -n X`` runs."""
    problems, targets, variables = [], makefile.targets(), makefile.variables()
    args = list(inv.args)
    named: list[str] = []
    while args:
        arg = args.pop(0)
        if arg in ("-C", "-f", "-j", "-o", "-W"):
            return [f"make {arg} is not something this check reads"]
        if arg.startswith("-"):
            continue
        if "=" in arg:
            name = arg.split("=", 1)[0]
            if name not in variables:
                problems.append(f"make variable {name} is not set anywhere in the Makefile (make ignores it)")
        elif arg not in targets:
            problems.append(
                f"no make target {arg!r} in the Makefile; it has: {', '.join(makefile.commands_targets())}"
            )
        else:
            named.append(arg)
    if inv.comment.startswith("=") and len(named) == 1 and not problems and HAS_MAKE:
        problems += check_make_equals(inv.comment[1:], named[0], makefile)
    return problems


def check_make_equals(claimed: str, target: str, makefile: Makefile) -> list[str]:
    runs = {
        normalised(cmd)
        for line in code_lines(MAKEFILE, 1, make_dry_run(target, makefile).split("\n"), "shell")
        for cmd in simple_commands(split_comment(line.text)[0])
    }
    wanted = [normalised(cmd) for cmd in simple_commands(claimed)]
    missing = [" ".join(cmd) for cmd in wanted if cmd not in runs]
    return [f"says make {target} runs `{m}`, but make -n {target} does not" for m in missing]


# ----------------------------------------------------------------------------- the checks


def extract_file(file: str, text: str | None = None) -> Extracted:
    """Every command a file shows (``text``: its content, if not the file's own)."""
    if text is None:
        text = (REPO / file).read_text(encoding="utf-8")
    if file == MAKEFILE:
        return makefile_extracted(Makefile(text))
    if file.endswith(".service"):
        return extract(unit_lines(file, text))
    return extract(markdown_lines(file, text))


def unit_lines(file: str, text: str) -> list[Line]:
    """The commands a systemd unit runs (ExecStart= and its kin; the prefixes - @ + ! stripped)."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        exec_line = re.match(r"^Exec\w*=\s*[-@+!:]*(.*)$", line)
        if exec_line:
            found.append(Line(file, number, exec_line.group(1), "shell"))
    return found


def problems_in(extracted: Extracted, makefile: Makefile) -> list[str]:
    problems = []
    for inv in extracted.invocations:
        if inv.program == "pneumo":
            found = check_pneumo(inv.args)
        elif inv.program == "make":
            found = check_make(inv, makefile)
        else:
            found = check_python_module(inv.args)
        problems += [f"{inv.line.where}: `{inv.shown()}`: {what}" for what in found]
    return problems


def uncheckable_problems(file: str, extracted: Extracted, whole_file: bool = True) -> list[str]:
    """New lines nobody allowed, and (``whole_file``) allowed lines that are gone or readable now."""
    problems = [
        f"{message}\n    (read it as a command, or add it to UNCHECKABLE with the reason)"
        for key, message in extracted.uncheckable.items()
        if key not in UNCHECKABLE
    ]
    problems += [
        f"{file}: UNCHECKABLE entry no longer needed (line gone or readable): {text!r}"
        for (entry_file, text) in UNCHECKABLE
        if whole_file and entry_file == file and (entry_file, text) not in extracted.uncheckable
    ]
    return problems


def makefile() -> Makefile:
    return Makefile((REPO / MAKEFILE).read_text(encoding="utf-8"))


needs_make = pytest.mark.skipif(not HAS_MAKE, reason="make is not installed (make -n expands the recipes)")
FILES = (*MARKDOWN_DOCS, pytest.param(MAKEFILE, marks=needs_make), UNIT)
#: the least the extractor must find in each file, so that a broken extractor cannot pass by finding nothing
MIN_PNEUMO_COMMANDS = {"README.md": 60, "deploy/JETSON.md": 8, "deploy/WATCH.md": 3, MAKEFILE: 7, UNIT: 1}


@pytest.mark.parametrize("file", FILES)
def test_docs_teach_only_commands_that_exist(file: str) -> None:
    extracted = extract_file(file)
    count = len(extracted.pneumo())
    assert count >= MIN_PNEUMO_COMMANDS[file], (
        f"{file}: only {count} pneumo commands found: extractor broken?"
    )
    problems = problems_in(extracted, makefile()) + uncheckable_problems(file, extracted)
    assert not problems, f"{len(problems)} command(s) in {file} do not match the CLI:\n" + "\n".join(problems)


# ----------------------------------------------------------------------------- systemd, watch.toml


def neutralised_unit(text: str, executable: str) -> str:
    """The unit with a missing ExecStart program replaced by one that exists here, arguments kept.

    Only this environment fact is changed: systemd-analyze verify fails on a program that is not
    installed; every directive stays as written.
    """

    def swap(match: re.Match[str]) -> str:
        program = match.group(2)
        if os.access(program, os.X_OK):
            return match.group(0)
        return f"{match.group(1)}{executable}{match.group(3)}"

    return re.sub(r"^(ExecStart=[-@+!:]*)(\S+)(.*)$", swap, text, flags=re.M)


def systemd_verify(unit_text: str, folder: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about the unit (neutralised): one entry per line of output."""
    unit = folder / Path(UNIT).name
    unit.write_text(neutralised_unit(unit_text, sys.executable), encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    said = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return said or ([f"exit status {done.returncode}"] if done.returncode else [])


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_systemd
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    said = systemd_verify((REPO / UNIT).read_text(encoding="utf-8"), tmp_path)
    assert not said, f"systemd-analyze verify {UNIT}:\n" + "\n".join(said)


@needs_systemd
def test_systemd_check_catches_a_directive_error(tmp_path: Path) -> None:
    text = (REPO / UNIT).read_text(encoding="utf-8").replace("RestartSec=10", "RestartSec=ten")
    said = systemd_verify(text, tmp_path)
    assert any("ten" in line for line in said), said


def test_unit_neutralised_only_where_the_program_is_missing() -> None:
    text = "[Service]\nExecStart=/nowhere/bin/pneumo edge watch --config /etc/x.toml\nUser=pneumo\n"
    out = neutralised_unit(text, "/usr/bin/python3")
    assert out == "[Service]\nExecStart=/usr/bin/python3 edge watch --config /etc/x.toml\nUser=pneumo\n"
    assert neutralised_unit(f"ExecStart={sys.executable} -V\n", "/x") == f"ExecStart={sys.executable} -V\n"


def watch_toml_examples() -> Iterator[tuple[int, str]]:
    """The ```toml blocks of deploy/WATCH.md: (line, text)."""
    text = (REPO / "deploy/WATCH.md").read_text(encoding="utf-8")
    for match in re.finditer(r"^```toml\n(.*?)^```", text, re.M | re.S):
        yield text.count("\n", 0, match.start()) + 2, match.group(1)


def test_watch_md_config_example_loads(tmp_path: Path) -> None:
    from edge_runtime.watch_cli import build_parser, config_from_args

    examples = list(watch_toml_examples())
    assert examples, "deploy/WATCH.md: no ```toml example found"
    for number, text in examples:
        path = tmp_path / "watch.toml"
        path.write_text(text, encoding="utf-8")
        # what 'pneumo edge watch --config FILE --print-config' resolves: file, defaults and checks
        args = build_parser("pneumo edge watch").parse_args(["--config", str(path)])
        try:
            config = config_from_args(args)
        except Exception as exc:  # noqa: BLE001 - the message is the failure
            pytest.fail(f"deploy/WATCH.md:{number}: the watch.toml example does not load: {exc}")
        assert config.bundle == Path("/opt/pneumo/bundles/current"), f"deploy/WATCH.md:{number}: {config}"


# ----------------------------------------------------------------------------- the checker, checked


def problems_of(file: str, text: str) -> list[str]:
    extracted = extract_file(file, text)
    return problems_in(extracted, makefile()) + uncheckable_problems(file, extracted, whole_file=False)


def test_a_wrong_flag_in_the_readme_is_named_with_file_line_and_flag() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "--opset 17   # just the parity-checked ONNX file" in text
    broken = text.replace("--opset 17   # just the", "--opsett 17   # just the")
    number = broken.split("\n").index(next(ln for ln in broken.split("\n") if "--opsett" in ln)) + 1
    problems = problems_of("README.md", broken)
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        f"README.md:{number}: `pneumo export onnx runs/demo -o model.onnx --opsett 17`"
    )
    assert "'pneumo export onnx' has no option --opsett (did you mean --opset" in problems[0]


@needs_make
def test_a_wrong_flag_in_a_makefile_recipe_is_named_with_its_line() -> None:
    text = (REPO / MAKEFILE).read_text(encoding="utf-8")
    assert text.count("--per-class 200") == 1
    broken = text.replace("--per-class 200", "--per-klass 200")
    number = next(n for n, ln in enumerate(broken.split("\n"), start=1) if "--per-klass" in ln)
    problems = problems_of(MAKEFILE, broken)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"Makefile:{number}: `pneumo data synth $data --per-klass 200`"), problems
    assert "has no option --per-klass (did you mean --per-class?)" in problems[0]


@pytest.mark.parametrize(
    ("doc", "wanted"),
    [
        (
            "```bash\npneumo edge predict b/ x.png --backend tensorrt\n```",
            "--backend: 'tensorrt' is not one of",
        ),
        ("```bash\npneumo edge predikt b/ x.png\n```", "'pneumo edge' has no subcommand 'predikt'"),
        ("```bash\npneumo deploy b/\n```", "unknown command 'deploy'"),
        (
            "```bash\npneumo train --arch lhu \\\n    --data D --out R --epoch 3\n```",
            "README.md:2: `pneumo train",
        ),
        (
            "```bash\npneumo train --arch lhu \\\n    --data D --out R --epoch 3\n```",
            "--epoch abbreviates --epochs",
        ),
        ("Run `pneumo data synth OUT [--layout split|flat|tree]`.", "'tree' is not one of its choices"),
        ("```bash\nfor s in 1 2; do pneumo train --seed $s --bogus; done\n```", "has no option --bogus"),
        ("```bash\nsudo -u x /opt/v/bin/pneumo edge doctor --jsn\n```", "has no option --jsn"),
        ("```bash\npneumo edge doctor extra\n```", "takes no further positional argument"),
        ("```bash\npneumo bench watch B --count many\n```", "'many' is not a valid value"),
        pytest.param(
            "```bash\nmake bench  # = pneumo bench --auto -o elsewhere\n```",
            "make -n bench does not",
            marks=needs_make,
        ),
        ("```bash\nmake demos\n```", "no make target 'demos'"),
        ("```bash\nmake demo DATTA=x\n```", "make variable DATTA is not set"),
        ("```toml\n# built with 'pneumo edge build --dlaa 0'\n```", "has no option --dlaa"),
        ("```bash\npython -m train.no_such_module\n```", "no module train.no_such_module"),
        ("```bash\necho pneumo edge build b/\n```", "1 pneumo command(s) the extractor cannot read"),
    ],
)
def test_the_checker_finds(doc: str, wanted: str) -> None:
    problems = problems_of("README.md", doc)
    assert any(wanted in p for p in problems), problems


@pytest.mark.parametrize(
    "doc",
    [
        "```bash\nD=../data\npneumo train --arch lite0 --data $D --out runs/x \\\n  --seed 0  # a comment --bogus\n```",
        "Run `pneumo data synth OUT [--per-class 160] [--layout split|flat]` or `pneumo edge\n  build`.",
        "```bash\npneumo edge predict b/ 'more/**/*.png' --csv -o r.csv && cat r.csv | head\n```",
        "```bash\npneumo edge doctor --json > device.json 2>/dev/null\n```",
        "```bash\nR=runs/x; pneumo bench ${R}/b --batch 1,8 --backends $B 2>&1 | tee out.txt\n```",
        "    pneumo train ensemble runs/a runs/b --out runs/ens\n",
        "```bash\npneumo edge watch --config /etc/pneumo/watch.toml --print-config\n```",
        "```bash\npneumo train select RUN RUN ...  # the rule\n```",
        "```bash\nsudo useradd --system pneumo && sudo install -d -o pneumo -g pneumo /srv\n```",
    ],
)
def test_the_checker_accepts(doc: str) -> None:
    assert problems_of("README.md", doc) == []
