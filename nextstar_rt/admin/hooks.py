"""The hook pipeline that every message path runs.

Pre-send hooks see a message before it is stored and return a verdict; the
first rejection wins and the message is stored nowhere. Post-send hooks see a
message after it is committed and published (audit, push, indexing); they
cannot change its fate, and a failing one is logged without affecting others.

Hooks here are plain functions, not coroutines, because they run on the send
path of every message. A hook that must call a remote service would need an
asynchronous variant of this pipeline, which does not exist yet.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Action", "Verdict", "Draft", "HookPipeline", "BlockedWordsHook", "ALLOW"]

logger = logging.getLogger(__name__)


class Action(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"


@dataclass(slots=True, frozen=True)
class Verdict:
    action: Action
    hook: str = ""
    reason: str = ""


ALLOW = Verdict(Action.ALLOW)


@dataclass(slots=True)
class Draft:
    """A message on its way in, as hooks see it."""

    path: str  # "direct" or "group"; the pre-send stage may not know yet
    sender_id: int
    conversation_id: int
    text: str | None
    data: dict[str, Any] | None


PreSendHook = Callable[[Draft], Verdict]
PostSendHook = Callable[[Draft, int], None]


class HookPipeline:
    """Ordered pre-send and post-send hooks."""

    def __init__(
        self,
        pre_send: Sequence[PreSendHook] = (),
        post_send: Sequence[PostSendHook] = (),
    ) -> None:
        self.pre_send = list(pre_send)
        self.post_send = list(post_send)

    def check(self, draft: Draft) -> Verdict:
        """Run the pre-send hooks in order; return the first non-allow verdict."""
        for hook in self.pre_send:
            verdict = hook(draft)
            if verdict.action is not Action.ALLOW:
                return verdict
        return ALLOW

    def stored(self, draft: Draft, seq: int) -> None:
        """Run the post-send hooks for a committed message."""
        for hook in self.post_send:
            try:
                hook(draft, seq)
            except Exception:
                logger.exception("post-send hook %r failed", hook)


class BlockedWordsHook:
    """Reject a message whose text contains a configured word or phrase.

    Matching ignores case and finds every word in one pass of a compiled
    alternation, so the cost does not grow per word the way a loop would.
    Structured payloads are searched in their string values.
    """

    name = "blocked_words"

    def __init__(self, words: Sequence[str]) -> None:
        words = sorted({w.strip().lower() for w in words if w.strip()}, key=len)
        self._pattern = (
            re.compile("|".join(re.escape(w) for w in reversed(words)), re.IGNORECASE)
            if words
            else None
        )

    def __call__(self, draft: Draft) -> Verdict:
        if self._pattern is None:
            return ALLOW
        for text in _texts(draft):
            if self._pattern.search(text):
                return Verdict(Action.REJECT, self.name, "contains a blocked word")
        return ALLOW


def _texts(draft: Draft) -> list[str]:
    texts = [draft.text] if draft.text else []
    if draft.data is not None:
        stack: list[Any] = [draft.data]
        while stack:
            value = stack.pop()
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, list):
                stack.extend(value)
    return texts
