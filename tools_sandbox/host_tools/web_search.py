"""``web_search``: search a local document collection (default, offline) or a search API.

Providers implement :class:`SearchProvider`:

* :class:`LocalCollectionProvider` indexes the ``.txt``/``.md`` files under a folder with BM25
  (``rank_bm25.BM25Plus``: its idf stays positive in small collections, where Okapi's goes negative
  for terms in over half the documents). Tokens are lowercase runs of letters and digits; a few
  English stopwords are dropped from queries. Only documents holding a query term are hits; a hit's
  ``url_or_path`` is the collection folder as configured plus the file's relative path. The index
  is built once per process per folder and rebuilt when a file is added, removed or changes
  (mtime or size). Each hit's snippet is cut around the best-matching paragraph.
* :class:`ApiSearchProvider` calls a JSON search API, Brave-style by default
  (``GET {endpoint}?q=...&count=k`` with ``X-Subscription-Token: <key>``). The request goes through
  :func:`tools_sandbox.host_tools.http_client.fetch_url`, so the same SSRF guard, allowlist
  (``tools.http_client.allow_hosts``), caps and timeouts as ``http_client`` apply. The key is read
  from the environment variable ``api_key_env`` names, sent only in its header (dropped on a
  cross-origin redirect), never logged, returned or put in an error message.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable
from urllib.parse import urlencode

from pydantic import BaseModel

from officeray.contracts import ErrorType
from officeray.tools.host_inputs import HttpClientSettings, WebSearchInput, WebSearchSettings
from officeray.tools.spec import HostContext, HostToolError, tool_settings
from tools_sandbox.host_tools import within_step
from tools_sandbox.ssrf import Resolver

TOOL_NAME = "web_search"
PROVIDER_SERVICE = "web_search_provider"
"""``HostContext.services`` key of a :class:`SearchProvider` to use instead of the configured one."""

PROJECT_ROOT = Path(__file__).resolve().parents[2]
COLLECTION_SUFFIXES = (".txt", ".md")
MAX_COLLECTION_FILES = 5_000
MAX_FILE_BYTES = 1024**2
"""Larger files are left out of the index."""
SNIPPET_CHARS = 280

_WORD_RE = re.compile(r"[^\W_]+")
STOPWORDS = frozenset(
    {"a", "an", "and", "are", "as", "at", "be", "by", "can", "do", "does", "for", "from", "how", "i", "in"}
    | {"is", "it", "of", "on", "or", "the", "this", "to", "was", "what", "when", "where", "which", "who"}
    | {"why", "with"}
)
"""Left out of a query's terms (unless nothing else is left), not out of the index."""
_TAG_RE = re.compile(r"<[^>]{0,200}>")


@dataclass(frozen=True)
class SearchHit:
    title: str
    url_or_path: str
    snippet: str
    score: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class SearchProvider(Protocol):
    name: str

    def search(self, query: str, k: int) -> list[SearchHit]:
        """At most ``k`` hits, best first; raises :class:`HostToolError` on failure."""
        ...


def tokenize(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


# --------------------------------------------------------------------------------------------------
# Local collection
# --------------------------------------------------------------------------------------------------


@dataclass
class _Document:
    path: str
    title: str
    passages: list[str]
    passage_tokens: list[list[str]]

    @property
    def tokens(self) -> list[str]:
        return [t for tokens in self.passage_tokens for t in tokens]


Signature = tuple[tuple[str, int, int], ...]


def _collection_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if path.suffix.lower() not in COLLECTION_SUFFIXES or not path.is_file():
            continue
        if not path.resolve().is_relative_to(root):
            continue  # a symlink out of the collection is not followed
        files.append(path)
        if len(files) >= MAX_COLLECTION_FILES:
            break
    return files


def collection_signature(root: Path) -> Signature:
    """What the cached index is checked against: every file's relative path, mtime and size."""
    out = []
    for path in _collection_files(root):
        st = path.stat()
        out.append((path.relative_to(root).as_posix(), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _passages(text: str) -> list[str]:
    """Paragraphs (blank-line separated, whitespace collapsed), a heading joined to the text under it."""
    out: list[str] = []
    pending = ""
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if not lines:
            continue
        heading = ""
        if lines[0].lstrip().startswith("#"):
            heading, lines = lines[0].lstrip().lstrip("#").strip(), lines[1:]
        body = " ".join(" ".join(lines).split())
        if heading:
            if pending:
                out.append(pending)
            pending = heading
        if body:
            out.append(f"{pending}: {body}" if pending else body)
            pending = ""
    if pending:
        out.append(pending)
    return out


def _title(path: Path, text: str) -> str:
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ").replace("-", " ")


def _snippet(passage: str, terms: list[str]) -> str:
    """``passage``, or a window of it around the first of ``terms`` (most telling first) it holds."""
    if len(passage) <= SNIPPET_CHARS:
        return passage
    lowered = passage.lower()
    at = 0
    for term in terms:
        match = re.search(rf"(?<![^\W_]){re.escape(term)}(?![^\W_])", lowered)
        if match is not None:
            at = match.start()
            break
    start = max(0, min(at - SNIPPET_CHARS // 3, len(passage) - SNIPPET_CHARS))
    end = min(len(passage), start + SNIPPET_CHARS)
    if 0 < start < at:
        space = passage.find(" ", start, at)
        start = space + 1 if space >= 0 else start
    if end < len(passage):
        space = passage.rfind(" ", max(start, at), end)
        end = space if space > start else end
    return ("…" if start > 0 else "") + passage[start:end].strip() + ("…" if end < len(passage) else "")


class LocalIndex:
    """BM25 over one folder's documents (built eagerly; immutable)."""

    K1 = 1.5

    def __init__(self, root: Path, display_root: str, signature: Signature) -> None:
        from rank_bm25 import BM25Plus

        self.root = root
        self.signature = signature
        self.documents: list[_Document] = []
        for rel, _mtime, size in signature:
            if size > MAX_FILE_BYTES:
                continue
            path = root / rel
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            passages = _passages(text)
            self.documents.append(
                _Document(
                    path=f"{display_root.rstrip('/')}/{rel}",
                    title=_title(path, text),
                    passages=passages,
                    passage_tokens=[tokenize(p) for p in passages],
                )
            )
        corpus = [doc.tokens for doc in self.documents]
        self._bm25 = BM25Plus(corpus) if any(corpus) else None
        self._vocab = [set(tokens) for tokens in corpus]

    def _idf(self, term: str) -> float:
        assert self._bm25 is not None
        return float(self._bm25.idf.get(term, 0.0))

    def _best_passage(self, doc: _Document, terms: list[str]) -> str:
        def score(tokens: list[str]) -> float:
            counts = Counter(tokens)
            return sum(
                self._idf(t) * counts[t] * (self.K1 + 1) / (counts[t] + self.K1) for t in terms if counts[t]
            )

        scored = [(score(tokens), -i) for i, tokens in enumerate(doc.passage_tokens)]
        best = max(scored, default=(0.0, 0))
        return doc.passages[-best[1]] if doc.passages else ""

    def search(self, query: str, k: int) -> list[SearchHit]:
        words = list(dict.fromkeys(tokenize(query)))
        terms = [w for w in words if w not in STOPWORDS] or words
        if self._bm25 is None or not terms:
            return []
        scores = self._bm25.get_scores(terms)
        matching = [i for i, vocab in enumerate(self._vocab) if vocab.intersection(terms)]
        matching.sort(key=lambda i: (-float(scores[i]), self.documents[i].path))
        by_weight = sorted(terms, key=self._idf, reverse=True)
        hits = []
        for i in matching[:k]:
            doc = self.documents[i]
            score = float(scores[i])
            hits.append(
                SearchHit(
                    title=doc.title,
                    url_or_path=doc.path,
                    snippet=_snippet(self._best_passage(doc, terms), by_weight),
                    score=round(score, 4) if math.isfinite(score) else 0.0,
                )
            )
        return hits


_INDEXES: dict[tuple[Path, str], LocalIndex] = {}
_INDEX_LOCK = threading.Lock()


def resolve_collection(folder: Path) -> Path:
    """``folder`` as an existing directory: absolute, else under the working directory or project root."""
    bases = [Path()] if folder.is_absolute() else [Path.cwd(), PROJECT_ROOT]
    for base in bases:
        candidate = (base / folder).resolve()
        if candidate.is_dir():
            return candidate
    raise HostToolError(ErrorType.TOOL_ERROR, f"web_search: collection folder {str(folder)!r} not found")


def local_index(folder: Path, display_root: str | None = None) -> LocalIndex:
    """The cached index of ``folder``, rebuilt if its files changed since it was built."""
    root = resolve_collection(folder)
    key = (root, display_root or folder.as_posix())
    signature = collection_signature(root)
    with _INDEX_LOCK:
        index = _INDEXES.get(key)
        if index is None or index.signature != signature:
            index = LocalIndex(root, key[1], signature)
            _INDEXES[key] = index
        return index


class LocalCollectionProvider:
    name = "local"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def search(self, query: str, k: int) -> list[SearchHit]:
        return local_index(self.folder, self.folder.as_posix()).search(query, k)


# --------------------------------------------------------------------------------------------------
# Search API
# --------------------------------------------------------------------------------------------------


def _clean(value: Any) -> str:
    return html.unescape(_TAG_RE.sub("", value)).strip() if isinstance(value, str) else ""


class ApiSearchProvider:
    name = "api"

    def __init__(
        self,
        settings: WebSearchSettings,
        http_settings: HttpClientSettings | None = None,
        *,
        resolve: Resolver | None = None,
        environ: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """``timeout_s``: the longest one search may take (its step's timeout), below
        ``tools.http_client.timeout_s``; None: that setting alone."""
        if not settings.endpoint or not settings.api_key_env:
            raise ValueError("ApiSearchProvider needs settings.endpoint and settings.api_key_env")
        self.settings = settings
        self.http_settings = http_settings or HttpClientSettings()
        self.resolve = resolve
        self.environ = os.environ if environ is None else environ
        self.timeout_s = timeout_s

    def _fail(self, message: str, key: str) -> HostToolError:
        return HostToolError(ErrorType.TOOL_ERROR, f"web_search API: {message}".replace(key, "***"))

    def _request_url(self, query: str, k: int) -> str:
        s = self.settings
        assert s.endpoint is not None
        params = {s.query_param: query}
        if s.count_param:
            params[s.count_param] = str(k)
        params.update(s.extra_params)
        return s.endpoint + ("&" if "?" in s.endpoint else "?") + urlencode(params)

    def _items(self, answer: Any, key: str) -> list[Any]:
        node = answer
        for part in filter(None, self.settings.results_path.split(".")):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return []
        if not isinstance(node, list):
            raise self._fail(f"{self.settings.results_path!r} in the answer is not a list", key)
        return node

    def search(self, query: str, k: int) -> list[SearchHit]:
        from tools_sandbox.host_tools.http_client import fetch_url

        s = self.settings
        assert s.api_key_env is not None
        key = self.environ.get(s.api_key_env, "")
        if not key:
            raise HostToolError(
                ErrorType.TOOL_ERROR,
                f"web_search: the API key environment variable {s.api_key_env} is not set",
            )
        try:
            result = fetch_url(
                self._request_url(query, k),
                settings=self.http_settings,
                headers={s.api_key_header: key, "Accept": "application/json"},
                resolve=self.resolve,
                secret_headers=(s.api_key_header,),
                timeout_s=self.timeout_s,
            )
        except HostToolError as exc:
            exc.message = exc.message.replace(key, "***")
            exc.args = (exc.message,)
            raise
        if result.status != 200:
            raise self._fail(f"HTTP {result.status} from {result.url}", key)
        if result.truncated:
            raise self._fail("the answer is larger than tools.http_client.max_response_bytes", key)
        try:
            answer = json.loads(result.text())
        except ValueError:
            raise self._fail("the answer is not JSON", key) from None
        hits = []
        for rank, item in enumerate(self._items(answer, key)[:k]):
            if not isinstance(item, dict):
                continue
            hits.append(
                SearchHit(
                    title=_clean(item.get(s.title_field)).replace(key, "***"),
                    url_or_path=_clean(item.get(s.url_field)).replace(key, "***"),
                    snippet=_clean(item.get(s.snippet_field)).replace(key, "***"),
                    score=round(1.0 / (rank + 1), 4),
                )
            )
        return hits


# --------------------------------------------------------------------------------------------------
# The tool
# --------------------------------------------------------------------------------------------------


def make_provider(settings: WebSearchSettings, context: HostContext | None = None) -> SearchProvider:
    """The provider the settings name (``context.services["web_search_provider"]`` wins if set)."""
    if context is not None:
        injected = context.services.get(PROVIDER_SERVICE)
        if injected is not None:
            return cast(SearchProvider, injected)
    if settings.provider == "api":
        from tools_sandbox.host_tools.http_client import RESOLVER_SERVICE

        return ApiSearchProvider(
            settings,
            tool_settings(context, "http_client", HttpClientSettings),
            resolve=None if context is None else context.services.get(RESOLVER_SERVICE),
            timeout_s=None if context is None else within_step(None, context.services),
        )
    return LocalCollectionProvider(settings.collection)


def search(inputs: BaseModel, context: HostContext) -> dict[str, Any]:
    """The ``web_search`` host function.

    Returns ``{query, results: [{title, url_or_path, snippet, score}], provider}``.
    """
    args = (
        inputs if isinstance(inputs, WebSearchInput) else WebSearchInput.model_validate(inputs.model_dump())
    )
    if not isinstance(args.query, str):
        raise HostToolError(ErrorType.BAD_INPUT, "query must be text (an unresolved step reference?)")
    settings = tool_settings(context, TOOL_NAME, WebSearchSettings)
    k = min(args.max_results or settings.max_results, settings.max_results)
    provider = make_provider(settings, context)
    hits = provider.search(args.query, k)
    return {"query": args.query, "results": [hit.as_dict() for hit in hits[:k]], "provider": provider.name}
