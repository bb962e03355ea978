"""The hook pipeline and the blocked-words hook."""

from __future__ import annotations

from nextstar_rt.admin.hooks import (
    ALLOW,
    Action,
    BlockedWordsHook,
    Draft,
    HookPipeline,
    Verdict,
)


def _draft(text=None, data=None):
    return Draft("direct", 1, 1, text, data)


def test_blocked_words_match_case_insensitively_anywhere():
    hook = BlockedWordsHook(["scam", "free money"])
    assert hook(_draft("this is a SCAM")).action is Action.REJECT
    assert hook(_draft("get Free  money")).action is Action.ALLOW  # two spaces
    assert hook(_draft("get FREE MONEY now")).action is Action.REJECT
    assert hook(_draft("scampi for dinner")).action is Action.REJECT  # substring
    assert hook(_draft("all good")) is ALLOW


def test_blocked_words_search_structured_payloads():
    hook = BlockedWordsHook(["scam"])
    nested = {"type": "card", "body": {"items": [{"title": "a scam"}]}}
    assert hook(_draft(data=nested)).action is Action.REJECT
    assert hook(_draft(data={"type": "card", "body": {"n": 1}})) is ALLOW


def test_an_empty_word_list_allows_everything():
    assert BlockedWordsHook(["", "  "])(_draft("anything")) is ALLOW


def test_the_first_rejection_wins_and_later_hooks_do_not_run():
    calls = []

    def first(draft):
        calls.append("first")
        return Verdict(Action.REJECT, "first", "no")

    def second(draft):
        calls.append("second")
        return ALLOW

    verdict = HookPipeline([first, second]).check(_draft("x"))
    assert (verdict.hook, calls) == ("first", ["first"])


def test_a_failing_post_send_hook_does_not_stop_the_others():
    seen = []

    def broken(draft, seq):
        raise RuntimeError("boom")

    HookPipeline(post_send=[broken, lambda d, s: seen.append(s)]).stored(_draft(), 7)
    assert seen == [7]
