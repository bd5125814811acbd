"""Variables in tier commands: `$PORT`, `${PORT}` and the tier's `env`, expanded like a
Procfile's, without a shell.

A tier's command is split into words once (``shlex.split`` when written as text), then
each word is expanded on its own: ``$NAME`` / ``${NAME}`` become the variable's value
(never split into more words, never globbed, never run), ``$$`` is one literal ``$``.
Nothing else is special: quotes do not stop expansion (the command was split already),
and ``\\$`` is no escape (the split turns it into ``$``). Anything else after a ``$``
(``$1``, ``$(…)``, ``${A:-b}``, a lone ``$``) is an error, found at `validate` time.

One function expands (``expand_command``); the agent calls it wherever it starts a tier,
with the port the tier really gets; `validate` calls ``command_problems`` with the names a
tier may use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

# $$ | ${NAME} | $NAME | $ followed by anything else (or nothing)
_TOKEN = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*)|(.?))", re.S)

ALLOWED = ("$PORT, ${PORT}, $NAME or ${NAME} for a variable of the tier's env, "
           "and $$ for a literal $")


class CommandError(ValueError):
    """A tier command that cannot be expanded; ``index`` is the word at fault."""

    def __init__(self, index: int, word: str, message: str) -> None:
        self.index, self.word = index, word
        super().__init__(message)


def _malformed(rest: str) -> str:
    if rest == "":
        return "a lone $ at the end of the word"
    if rest == "(":
        return "$(…) command substitution is not supported (tier commands run without a shell)"
    if rest == "{":
        return "${…} must hold just a variable name (no defaults, no other shell syntax)"
    return f"${rest} is not a variable reference"


def _scan(word: str) -> Iterable[tuple[re.Match[str], str | None, str | None]]:
    """Each `$` token of ``word``: (match, variable name or None, problem or None)."""
    for m in _TOKEN.finditer(word):
        dollar, braced, bare, other = m.groups()
        if dollar:
            yield m, None, None
        elif braced or bare:
            yield m, braced or bare, None
        else:
            yield m, None, _malformed(other or "")


def expand_command(command: Sequence[str], env: Mapping[str, str]) -> tuple[str, ...]:
    """``command`` with every ``$NAME``/``${NAME}`` replaced by ``env[NAME]`` and ``$$`` by
    ``$``, word by word (a value never becomes more words). Raises CommandError for an
    unknown variable or malformed syntax. Pure."""
    out = []
    for i, word in enumerate(command):
        parts, last = [], 0
        for m, name, problem in _scan(word):
            if problem is not None:
                raise CommandError(i, word, f"{problem}; allowed: {ALLOWED}")
            parts.append(word[last:m.start()])
            if name is None:
                parts.append("$")
            elif name in env:
                parts.append(env[name])
            else:
                raise CommandError(i, word, f"${name} is not set for this tier; allowed: "
                                   + ", ".join(f"${n}" for n in sorted(env)))
            last = m.end()
        parts.append(word[last:])
        out.append("".join(parts))
    return tuple(out)


def command_problems(command: Sequence[str], names: Iterable[str],
                     secrets: Iterable[str] = ()) -> list[tuple[int, str]]:
    """(word index, message) for every reference ``expand_command`` would refuse with the
    variables ``names`` (PORT and the tier's env); a reference to one of ``secrets`` is
    refused too: a command line is visible to every process of the server. Pure."""
    known, hidden = set(names), set(secrets)
    found = []
    for i, word in enumerate(command):
        for _, name, problem in _scan(word):
            if problem is not None:
                found.append((i, f"{problem}; allowed: {ALLOWED}"))
            elif name is not None and name in hidden:
                found.append((i, f"${name} is a secret: secrets are not expanded into command "
                                 "lines (every process of the server can read those); read it "
                                 "from the environment in the app"))
            elif name is not None and name not in known:
                found.append((i, f"${name} is not a variable of this tier; allowed: "
                                 + ", ".join(f"${n}" for n in sorted(known))
                                 + " (add it to the tier's env), and $$ for a literal $"))
    return found


def tier_environment(env: Mapping[str, str], port: int) -> dict[str, str]:
    """The variables a tier's command may use: its env and PORT (the port it listens on)."""
    return {**env, "PORT": str(port)}
