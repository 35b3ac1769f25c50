"""Example plugin tools: ``word_count`` and ``slugify``.

Enable them in a config file, then run officeray from the repository root (module names are
looked up on ``sys.path`` plus the current directory)::

    plugins: ["examples.plugins.text_tools"]

    $ officeray tools --config my.yaml        # lists word_count and slugify with the built-ins

In a plan: ``{"step_id": "s1", "action": "slugify", "inputs": {"text": "Hello, World!"}}`` →
``{"slug": "hello-world"}``. They run in the sandbox like the built-in tools: this whole file is
sent with each call and imported there, so it may import only the standard library, pydantic and
:mod:`officeray.tools`. The functions stay plain functions: ``word_count(WordCountInput(text="a b"))``.
"""

from __future__ import annotations

import re
import unicodedata

from pydantic import BaseModel, Field

from officeray.tools import tool

MAX_TEXT_CHARS = 100_000


class WordCountInput(BaseModel):
    text: str = Field(max_length=MAX_TEXT_CHARS, description="The text to count.")


@tool(
    description="Count the words (whitespace-separated) and lines of a text; returns words and lines.",
    risk="low",
    outputs=("words", "lines"),
)
def word_count(inputs: WordCountInput) -> dict[str, int]:
    return {"words": len(inputs.text.split()), "lines": len(inputs.text.splitlines())}


class SlugifyInput(BaseModel):
    text: str = Field(min_length=1, max_length=1_000, description="The title to turn into a slug.")
    separator: str = Field(default="-", pattern=r"^[-_.]$", description="One of - _ .")
    max_length: int = Field(default=80, ge=1, le=200, description="Longest slug returned.")


@tool(
    description=(
        "Turn a title into a URL slug: ASCII letters and digits in lower case joined by the separator; "
        "returns slug."
    ),
    outputs=("slug",),
)
def slugify(inputs: SlugifyInput) -> dict[str, str]:
    ascii_text = unicodedata.normalize("NFKD", inputs.text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", inputs.separator, ascii_text.lower()).strip(inputs.separator)
    if not slug:
        raise ValueError(f"{inputs.text!r} has no letters or digits to make a slug of")
    return {"slug": slug[: inputs.max_length].rstrip(inputs.separator)}
