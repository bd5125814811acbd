"""Variables in tier commands (spec/_command.py): the one expansion, table-tested."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeshot.spec import CommandError, command_problems, expand_command, tier_environment

ENV = {"PORT": "8000", "WORKERS": "2", "GREETING": "hello world", "EMPTY": "",
       "STAR": "*", "SUB": "$(id)"}

EXPANDS = [
    # (command, expanded)
    (("gunicorn", "-b", "0.0.0.0:$PORT", "app:app"), ("gunicorn", "-b", "0.0.0.0:8000", "app:app")),
    (("python3", "-m", "http.server", "${PORT}"), ("python3", "-m", "http.server", "8000")),
    (("app", "--workers=$WORKERS", "--port=${PORT}"), ("app", "--workers=2", "--port=8000")),
    (("app", "${PORT}${WORKERS}x"), ("app", "80002x")),
    (("app", "$PORT.5"), ("app", "8000.5")),  # a name ends where letters/digits/_ end
    # a value is one word: never split, globbed or run
    (("echo", "$GREETING"), ("echo", "hello world")),
    (("echo", "$STAR"), ("echo", "*")),
    (("echo", "$SUB"), ("echo", "$(id)")),
    (("echo", "$EMPTY"), ("echo", "")),
    # $$ is a literal dollar, and what follows is not a reference
    (("echo", "$$PORT"), ("echo", "$PORT")),
    (("echo", "cost: 5$$"), ("echo", "cost: 5$")),
    (("echo", "$$$PORT"), ("echo", "$8000")),
    (("echo", "$$$$"), ("echo", "$$")),
    # nothing else is special
    (("echo", "*.py", "`id`", "a;b", "'q'", "\\n"), ("echo", "*.py", "`id`", "a;b", "'q'", "\\n")),
    (("app",), ("app",)),
]


@pytest.mark.parametrize(("command", "expanded"), EXPANDS, ids=[" ".join(c) for c, _ in EXPANDS])
def test_expand_command(command, expanded):
    assert expand_command(command, ENV) == expanded
    assert command_problems(command, ENV) == []


REFUSED = [
    # (command, word index, message fragment)
    (("app", "--port", "$PROT"), 2, "$PROT is not set for this tier; allowed: $EMPTY, $GREETING"),
    (("app", "${HOME}"), 1, "$HOME is not set"),
    (("app", "5$"), 1, "a lone $ at the end of the word; allowed: $PORT, ${PORT}"),
    (("app", "$1"), 1, "$1 is not a variable reference"),
    (("app", "$-x"), 1, "$- is not a variable reference"),
    (("sh", "-c", "echo $(id)"), 2, "$(…) command substitution is not supported"),
    (("app", "${PORT:-80}"), 1, "${…} must hold just a variable name"),
    (("app", "${PORT"), 1, "${…} must hold just a variable name"),
    (("app", "${}"), 1, "${…} must hold just a variable name"),
    (("ok", "$PORT", "${1}"), 2, "${…} must hold just a variable name"),
]


@pytest.mark.parametrize(("command", "index", "fragment"), REFUSED,
                         ids=[" ".join(c) for c, _, _ in REFUSED])
def test_expand_command_refuses(command, index, fragment):
    with pytest.raises(CommandError) as caught:
        expand_command(command, ENV)
    assert caught.value.index == index and caught.value.word == command[index]
    assert fragment in str(caught.value)
    found = command_problems(command, {"PORT"})
    assert found and found[0][0] == index


def test_problems_name_every_bad_word_and_refuse_secrets():
    found = command_problems(("app", "$A", "ok $PORT", "$KEY", "x$"), {"PORT", "A"}, {"KEY"})
    assert [i for i, _ in found] == [3, 4]
    assert "$KEY is a secret" in found[0][1]
    assert "lone $" in found[1][1]
    assert "$B is not a variable of this tier; allowed: $A, $PORT (add it to the tier's env)" \
        in command_problems(("app", "$B"), {"PORT", "A"})[0][1]


def test_tier_environment_is_env_and_the_port():
    assert tier_environment({"A": "1"}, 9000) == {"A": "1", "PORT": "9000"}


_words = st.lists(st.text(max_size=20), min_size=1, max_size=5)
_env = st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                       st.text(max_size=20), max_size=4)


@settings(max_examples=200, deadline=None)
@given(_words, _env)
def test_any_text_with_its_dollars_doubled_comes_back_as_written(words, env):
    """`$$` is the one escape: any word survives, one word for one word, whatever the env."""
    escaped = tuple(w.replace("$", "$$") for w in words)
    assert expand_command(escaped, env) == tuple(words)
    assert command_problems(escaped, env) == []


@settings(max_examples=200, deadline=None)
@given(_env, st.text(max_size=10), st.text(max_size=10))
def test_a_value_is_spliced_in_as_it_is(env, before, after):
    """Whatever a value holds (spaces, quotes, $, globs), it lands verbatim inside its word."""
    for name, value in env.items():
        word = before.replace("$", "$$") + "${" + name + "}" + after.replace("$", "$$")
        assert expand_command(("cmd", word), env) == ("cmd", before + value + after)
