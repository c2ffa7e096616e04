"""The pure rules of secrets: what masks a value (however the output is cut up), which names
and values are accepted, and which jobs get an environment's secrets."""

from __future__ import annotations

import base64
import random
import re
import textwrap
import time

import pytest

from core import secrets
from core.errors import InvalidInput
from core.secrets import MASK, Masker, check_name, check_value, mask_variants, runner_may_receive

VALUE = "pr0d-Key/with+chars=7Xq"


def test_every_base64_form_of_a_value_is_masked() -> None:
    masker = Masker([VALUE])
    for raw in (VALUE, VALUE + "\n"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(raw.encode()).decode()
            assert masker.mask(f"a {text} b") == f"a {MASK} b"
    assert masker.mask(f"x{VALUE}y{VALUE}") == f"x{MASK}y{MASK}"


def test_a_value_split_between_reads_is_still_masked() -> None:
    text = f"start {VALUE} middle {base64.b64encode(VALUE.encode()).decode()} end {VALUE[:5]}"
    for size in (1, 2, 3, 7, 11):
        masker = Masker([VALUE])
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        out = "".join(masker.feed("stdout", p) for p in pieces) + "".join(t for _, t in masker.flush())
        assert out == f"start {MASK} middle {MASK} end {VALUE[:5]}", size


def test_lines_of_a_multiline_value_are_masked_alone() -> None:
    masker = Masker(["-----BEGIN KEY-----\nabcdefgh\nxy\n"])
    assert masker.mask("abcdefgh xy") == f"{MASK} xy"  # (too short to mask alone: "xy")
    assert "xy" not in mask_variants(["xy\nabcd"])


def test_a_large_multiline_value_masks_a_megabyte_of_output_in_moments() -> None:
    """A certificate bundle of 20 KiB has thousands of forms (each line, each base64 line): the
    runner masks a job's output as it reads it, so masking a megabyte must not take seconds
    (it took over ten, throttling the job through back-pressure)."""
    key = base64.b64encode(random.Random(7).randbytes(15_000)).decode()
    value = "-----BEGIN KEY-----\n" + "\n".join(textwrap.wrap(key, 64)) + "\n-----END KEY-----"
    masker = Masker([value])
    read = "".join(f"step {i}: applied manifests\n" for i in range(3000))[: 64 * 1024]
    started = time.perf_counter()
    out = [masker.feed("stdout", read) for _ in range(16)]
    assert time.perf_counter() - started < 3.0
    assert "".join(out) + masker.flush()[0][1] == read * 16
    line = textwrap.wrap(key, 64)[5]
    assert masker.mask(f"leak {line} and {value}!") == f"leak {MASK} and {MASK}!"


def test_masking_takes_the_longest_form_at_each_place_as_plain_alternation_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The forms are matched through one pattern shaped as their trie: the same text comes out as
    from trying every form, longest first; a trie too deep for it falls back to that."""
    rng = random.Random(3)
    letters = "abAB=-_\n +/"
    for _ in range(300):
        values = ["".join(rng.choice(letters) for _ in range(rng.randint(4, 30))) for _ in range(2)]
        masker = Masker(values)
        plain = re.compile("|".join(map(re.escape, masker.variants)))  # (longest first)
        text = "".join(rng.choice([*masker.variants, "ab", "=", "x\n"]) for _ in range(8))
        assert masker.mask(text) == plain.sub(MASK, text)
    tried: list[int] = []

    def too_deep(words: list[str]) -> str:
        tried.append(len(words))
        raise RecursionError

    monkeypatch.setattr(secrets, "_trie", too_deep)
    deep = Masker(["aaaa", "aaaaaaaa"])
    assert tried and deep.pattern is not None
    assert deep.pattern.pattern == "|".join(deep.variants)  # (longest first)
    assert deep.mask("x" + "a" * 12 + "y") == f"x{MASK}{MASK}y"


def test_names_and_values_are_checked_without_quoting_the_value() -> None:
    assert check_name("DEPLOY_KEY") == "DEPLOY_KEY"
    for bad in ("deploy_key", "1KEY", "SHIPYARD_TOKEN", "SLACK_X", "A-B", ""):
        with pytest.raises(InvalidInput):
            check_name(bad)
    with pytest.raises(InvalidInput) as short:
        check_value("K", " ab ")
    assert " ab " not in short.value.message
    with pytest.raises(InvalidInput):
        check_value("K", "abcd\x00")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        check_value("K", "abcd\udcff")  # (a byte that is not UTF-8, read from stdin)
    assert check_value("K", "clé-secrète") == "clé-secrète"


def test_a_runner_may_hold_an_environments_secrets_only_with_its_required_labels() -> None:
    assert runner_may_receive(["linux", "prod-eu"], ["prod-eu"])
    assert not runner_may_receive(["linux"], ["prod-eu"])  # not a production runner
    assert not runner_may_receive([], ["prod-eu", "linux"])
    assert runner_may_receive([], [])  # an environment that requires none
