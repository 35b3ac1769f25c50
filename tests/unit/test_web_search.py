"""web_search: BM25 over a local collection, the cached index, and the API provider against a loopback
fake search API (allowlisted through tools.http_client.allow_hosts, like any internal service)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import pytest

from officeray.contracts import ErrorType, PlanStep, StepOutcome
from officeray.tools.catalog import builtin_catalog
from officeray.tools.host_inputs import WebSearchInput, WebSearchSettings
from officeray.tools.spec import HostContext, ToolRuntime
from tests.unit.test_http_client import Handler, LoopbackServer, NoSandbox, failed, no_dns, ok
from tools_sandbox.executor import run_step
from tools_sandbox.host_tools.web_search import (
    ApiSearchProvider,
    LocalCollectionProvider,
    SearchHit,
    SearchProvider,
    local_index,
    tokenize,
)
from tools_sandbox.sandbox import Sandbox

CATALOG = builtin_catalog()
"""The built-in tools (these tests need no plugins)."""

KEY_ENV = "OFFICERAY_TEST_SEARCH_KEY"
KEY = "k-3f9a7c-very-secret"


def run(inputs: dict[str, Any], services: dict[str, Any] | None = None, **sections: Any) -> StepOutcome:
    step = PlanStep(step_id="s1", action="web_search", inputs=inputs, idempotency_key="k1")
    context = HostContext(
        settings=CATALOG.check_settings(sections), services={"dns_resolver": no_dns, **(services or {})}
    )
    return run_step(cast(Sandbox, NoSandbox()), step, inputs, Path("."), context)


DOCS = {
    "cats.md": "# Cats\n\nCats are small carnivorous mammals. A cat sleeps most of the day.\n\n"
    "Domestic cats purr when content.",
    "ray.md": "# Ray clusters\n\nRay is a framework for distributed Python.\n\n"
    "A Ray cluster has a head node and worker nodes. The autoscaler adds worker nodes to the cluster "
    "when tasks are pending and removes idle nodes.\n\nRay Serve deploys models.",
    "cooking.txt": "Pasta recipes\n\nBoil water, add salt, cook the pasta for nine minutes. "
    "A cluster of basil leaves on top.",
    "notes/garden.md": "# Garden\n\nTomatoes need sun. Water the garden in the evening.",
    ".hidden/secret.md": "# Hidden\n\nautoscaler autoscaler autoscaler",
    "ignored.py": "autoscaler = 'not a document'",
}


@pytest.fixture()
def collection(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    for rel, text in DOCS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def search(folder: Path, query: str, k: int = 5) -> list[SearchHit]:
    return LocalCollectionProvider(folder).search(query, k)


# --------------------------------------------------------------------------------------------------
# Catalog and settings
# --------------------------------------------------------------------------------------------------


def test_catalog_entry() -> None:
    spec = CATALOG.get_tool("web_search")
    assert spec.runtime == ToolRuntime.HOST
    assert spec.host_function == "tools_sandbox.host_tools.web_search:search"
    assert spec.settings_model is WebSearchSettings
    assert spec.input_model is WebSearchInput
    assert spec.outputs == ("results",)
    assert callable(spec.load_host_function())


def test_settings() -> None:
    settings = CATALOG.check_settings({})["web_search"]
    assert isinstance(settings, WebSearchSettings)
    assert settings.provider == "local"
    assert settings.collection == Path("examples/docs")
    with pytest.raises(ValueError, match=r"tools\.web_search.*endpoint and api_key_env"):
        CATALOG.check_settings({"web_search": {"provider": "api"}})
    with pytest.raises(ValueError, match="scheme"):
        CATALOG.check_settings(
            {"web_search": {"provider": "api", "endpoint": "file:///x", "api_key_env": "K"}}
        )
    with pytest.raises(ValueError, match=r"tools\.web_search\.api_key_env"):
        CATALOG.check_settings({"web_search": {"api_key_env": "not a name"}})


def test_providers_follow_the_protocol(collection: Path) -> None:
    assert isinstance(LocalCollectionProvider(collection), SearchProvider)
    api = WebSearchSettings(provider="api", endpoint="https://search.example/api", api_key_env=KEY_ENV)
    assert isinstance(ApiSearchProvider(api), SearchProvider)


def test_tokenize() -> None:
    assert tokenize("Ray's AUTOSCALER, v2.40 — café_bar") == [
        "ray",
        "s",
        "autoscaler",
        "v2",
        "40",
        "café",
        "bar",
    ]


# --------------------------------------------------------------------------------------------------
# Local collection
# --------------------------------------------------------------------------------------------------


def test_the_relevant_document_ranks_first(collection: Path) -> None:
    hits = search(collection, "how does the cluster autoscaler add worker nodes")
    assert hits[0].url_or_path == f"{collection.as_posix()}/ray.md"
    assert hits[0].title == "Ray clusters"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert hits[0].score > hits[-1].score
    paths = [h.url_or_path for h in hits]
    assert f"{collection.as_posix()}/cooking.txt" in paths  # "cluster" of basil leaves
    assert not any(".hidden" in p or p.endswith(".py") for p in paths)


def test_other_queries(collection: Path) -> None:
    assert search(collection, "do cats purr")[0].title == "Cats"
    assert search(collection, "PASTA")[0].title == "cooking"
    assert search(collection, "tomatoes")[0].url_or_path.endswith("notes/garden.md")


def test_snippet_is_the_best_matching_passage(collection: Path) -> None:
    (hit,) = search(collection, "autoscaler idle", k=1)
    assert "autoscaler" in hit.snippet.lower()
    assert "idle" in hit.snippet.lower()
    assert "Serve deploys" not in hit.snippet  # another paragraph


def test_long_passages_are_cut_around_the_match(tmp_path: Path) -> None:
    filler = " ".join(f"word{i}" for i in range(300))
    (tmp_path / "long.md").write_text(f"{filler} needle in the middle {filler}", encoding="utf-8")
    (hit,) = search(tmp_path, "needle")
    assert "needle" in hit.snippet
    assert len(hit.snippet) <= 300
    assert hit.snippet.startswith("…") and hit.snippet.endswith("…")


def test_k_limits_the_results(collection: Path) -> None:
    assert len(search(collection, "the", k=10)) >= 3
    assert len(search(collection, "the", k=2)) == 2


@pytest.mark.parametrize("query", ["zebra", "!!! ???", "xylophone quasar"])
def test_no_match_gives_no_results(collection: Path, query: str) -> None:
    assert search(collection, query) == []


def test_empty_collection(tmp_path: Path) -> None:
    assert search(tmp_path, "anything") == []
    (tmp_path / "empty.md").write_text("", encoding="utf-8")
    assert search(tmp_path, "anything") == []


def test_the_index_is_cached_and_rebuilt_on_change(collection: Path) -> None:
    first = local_index(collection)
    assert local_index(collection) is first
    assert search(collection, "zebra") == []

    path = collection / "cats.md"
    path.write_text(path.read_text(encoding="utf-8") + "\n\nA zebra is not a cat.", encoding="utf-8")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert local_index(collection) is not first
    assert search(collection, "zebra")[0].title == "Cats"

    second = local_index(collection)
    (collection / "zoo.txt").write_text("zebra zebra zebra stripes", encoding="utf-8")
    assert local_index(collection) is not second
    assert search(collection, "zebra stripes")[0].url_or_path.endswith("zoo.txt")

    (collection / "zoo.txt").unlink()
    assert not any(h.url_or_path.endswith("zoo.txt") for h in search(collection, "zebra"))


def test_missing_collection_is_a_tool_error(tmp_path: Path) -> None:
    outcome = run({"query": "x"}, web_search={"collection": str(tmp_path / "nope")})
    assert "not found" in failed(outcome, ErrorType.TOOL_ERROR)


def test_the_tool_with_the_shipped_collection() -> None:
    out = ok(run({"query": "how is DNS rebinding prevented", "max_results": 3}))
    assert out["provider"] == "local"
    assert out["query"] == "how is DNS rebinding prevented"
    assert 1 <= len(out["results"]) <= 3
    top = out["results"][0]
    assert set(top) == {"title", "url_or_path", "snippet", "score"}
    assert top["url_or_path"] == "examples/docs/host-tools.md"
    assert "rebinding" in top["snippet"].lower()


def test_the_tool_with_a_collection_and_a_cap(collection: Path) -> None:
    out = ok(
        run({"query": "the", "max_results": 50}, web_search={"collection": str(collection), "max_results": 2})
    )
    assert len(out["results"]) == 2
    assert ok(run({"query": "zebra"}, web_search={"collection": str(collection)}))["results"] == []


@pytest.mark.parametrize(
    ("inputs", "why"),
    [({"query": "  "}, "1 to 500"), ({"query": "x", "max_results": 0}, "max_results"), ({}, "query")],
)
def test_bad_inputs(inputs: dict[str, Any], why: str) -> None:
    assert why in failed(run(inputs), ErrorType.BAD_INPUT)


def test_an_injected_provider_wins() -> None:
    class Fixed:
        name = "fixed"

        def search(self, query: str, k: int) -> list[SearchHit]:
            return [SearchHit("t", "u", query, 1.0)] * 10

    out = ok(run({"query": "q", "max_results": 2}, services={"web_search_provider": Fixed()}))
    assert out == {
        "query": "q",
        "results": [{"title": "t", "url_or_path": "u", "snippet": "q", "score": 1.0}] * 2,
        "provider": "fixed",
    }


# --------------------------------------------------------------------------------------------------
# API provider against a loopback fake
# --------------------------------------------------------------------------------------------------


def fake_api(h: Handler) -> None:
    parts = urlsplit(h.path)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    if parts.path == "/moved":
        h.send(302, b"", {"Location": query["to"]})
        return
    if h.headers.get("X-Subscription-Token") != KEY:
        h.send(401, json.dumps({"error": "bad token"}).encode(), {"Content-Type": "application/json"})
        return
    if parts.path == "/broken":
        h.send(200, b"<html>not json</html>", {"Content-Type": "text/html"})
        return
    count = int(query.get("count", "10"))
    results = [
        {
            "title": f"<strong>{query['q']}</strong> result {i}",
            "url": f"https://site{i}.example/page",
            "description": f"About {query['q']} &amp; more, number {i}",
            "extra": KEY,
        }
        for i in range(count + 3)
    ]
    results[1]["description"] = f"echoing the token {KEY}"
    h.send(200, json.dumps({"web": {"results": results}}).encode(), {"Content-Type": "application/json"})


@pytest.fixture()
def api() -> Iterator[LoopbackServer]:
    with LoopbackServer(fake_api) as server:
        yield server


def api_sections(server: LoopbackServer, path: str = "/res/v1/web/search", **extra: Any) -> dict[str, Any]:
    return {
        "web_search": {
            "provider": "api",
            "endpoint": f"{server.origin}{path}",
            "api_key_env": KEY_ENV,
            **extra,
        },
        "http_client": {"allow_hosts": [server.allow]},
    }


def test_api_provider(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    out = ok(run({"query": "ray serve", "max_results": 3}, **api_sections(api)))
    assert out["provider"] == "api"
    assert [r["title"] for r in out["results"]] == [f"ray serve result {i}" for i in range(3)]
    assert out["results"][0]["url_or_path"] == "https://site0.example/page"
    assert out["results"][0]["snippet"] == "About ray serve & more, number 0"
    assert out["results"][1]["snippet"] == "echoing the token ***"
    assert [r["score"] for r in out["results"]] == [1.0, 0.5, 0.3333]
    assert KEY not in json.dumps(out)
    method, path, headers = api.seen[-1]
    assert method == "GET"
    assert parse_qs(urlsplit(path).query) == {"q": ["ray serve"], "count": ["3"]}
    assert headers["X-Subscription-Token"] == KEY
    assert headers["Accept"] == "application/json"


def test_api_key_missing(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    message = failed(run({"query": "x"}, **api_sections(api)), ErrorType.TOOL_ERROR)
    assert KEY_ENV in message
    assert "not set" in message
    assert api.seen == []


def test_api_errors_never_show_the_key(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY + "-wrong")
    message = failed(run({"query": "x"}, **api_sections(api)), ErrorType.TOOL_ERROR)
    assert "HTTP 401" in message
    assert KEY not in message
    monkeypatch.setenv(KEY_ENV, KEY)
    message = failed(run({"query": "x"}, **api_sections(api, path="/broken")), ErrorType.TOOL_ERROR)
    assert "not JSON" in message


def test_api_goes_through_the_ssrf_guard(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    sections = api_sections(api)
    sections["http_client"] = {"allow_hosts": []}  # the loopback fake is not allowlisted now
    message = failed(run({"query": "x"}, **sections), ErrorType.BAD_INPUT)
    assert "loopback" in message
    assert api.seen == []


def test_api_key_is_not_sent_across_origins(api: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with LoopbackServer(fake_api) as other:
        sections = api_sections(api, path=f"/moved?to={other.origin}/res/v1/web/search")
        sections["http_client"] = {"allow_hosts": [api.allow, other.allow]}
        message = failed(run({"query": "x"}, **sections), ErrorType.TOOL_ERROR)
        assert "HTTP 401" in message  # the other origin never saw the key
        assert "X-Subscription-Token" not in other.seen[-1][2]
