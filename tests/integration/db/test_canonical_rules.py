"""canonical_url since migration 0007 (capture._canonical, SQL inlined into the typed batch) gives
exactly what 0004's plpgsql version gave, for urls generated around its rules: scheme case,
userinfo and several '@', IPv6 literals, ports with leading zeros, empty or non-numeric ports,
default ports per scheme, '?' and '#' in every place, non-ASCII letters (only ASCII ones are
lower-cased), and arbitrary text. The old version is read from 0004 itself and created as a
temporary function of the test's own session.
"""

from __future__ import annotations

import asyncpg
from hypothesis import strategies as st

from tests.support.examples import examples
from worker import sql

EXAMPLES = 3000

SCHEMES = st.sampled_from(["http", "https", "HTTP", "HtTpS", "ftp", "", "a:b", "h", "ß"])
SEPARATORS = st.sampled_from(["://", "://", "://", ":/", ":", ""])
USERINFO = st.sampled_from(["", "", "user@", "u:p@", "a@b@", "@", "x:y@z@"])
# Non-ASCII letters that lower-case to ASCII ones elsewhere (İ -> i̇, the Kelvin sign -> k).
HOST_CHARS = st.sampled_from([*"aZ09.-_", "É", "é", "İ", "\u212a", "Σ", "[", "]", ":", "%"])
HOSTS = st.one_of(
    st.lists(HOST_CHARS, max_size=8).map("".join),
    st.sampled_from(["Example.COM", "[2001:DB8::1]", "[::1", "[fe80::1%eth0]", "EXAMPLE.com."]),
)
PORTS = st.sampled_from(["", ":", ":80", ":080", ":0080", ":443", ":0443", ":0", ":000", ":8080",
                         ":8a", ": 80", "::80", ":+80"])  # fmt: skip
TAILS = st.lists(
    st.sampled_from(["/", "?", "#", "a", "B", "%2F", "..", "é", "@", ":", "[", "]", " "]),
    max_size=6,
).map("".join)


@st.composite
def urls(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 9)) == 0:  # anything at all, now and then
        return draw(st.text(max_size=30).map(lambda t: t.replace("\x00", "")))
    return (
        draw(SCHEMES) + draw(SEPARATORS) + draw(USERINFO) + draw(HOSTS) + draw(PORTS) + draw(TAILS)
    )


def generate() -> list[str]:
    return examples(urls(), EXAMPLES)


def version_0004() -> str:
    """0004's canonical_url, renamed into the session's temporary schema."""
    text = (sql.migrations() / "0004_definer_search_path.sql").read_text()
    start = text.index("CREATE OR REPLACE FUNCTION capture.canonical_url(url text)")
    end = text.index("$$;", start) + len("$$;")
    body = text[start:end]
    return body.replace("capture.canonical_url(", "pg_temp.canonical_url_0004(", 1)


async def test_canonical_url_follows_0004s_rules_exactly(db_url: str) -> None:
    generated = generate()
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(version_0004())
        differ = await conn.fetch(
            "SELECT u, capture.canonical_url(u) AS now, pg_temp.canonical_url_0004(u) AS before"
            " FROM unnest($1::text[]) AS t(u)"
            " WHERE capture.canonical_url(u) IS DISTINCT FROM pg_temp.canonical_url_0004(u)",
            [*generated, None],
        )
        assert [tuple(r) for r in differ] == []
        # The comparison ran on what it was meant to: the generated urls, both versions there.
        assert len(set(generated)) > EXAMPLES // 2
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM unnest($1::text[]) AS t(u)"
                " WHERE pg_temp.canonical_url_0004(u) <> u",
                generated,
            )
            > EXAMPLES // 4
        )
        # And the typed batch's inlined form is the same function.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM unnest($1::text[]) AS t(u), capture._canonical(u) c"
                " WHERE c.canonical IS DISTINCT FROM capture.canonical_url(u)",
                generated,
            )
            == 0
        )
    finally:
        await conn.close()
