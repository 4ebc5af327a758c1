import pytest

from trainers import debian

SAMPLE = """\
Package: foo
Description-md5: 1
Description-en: frobnicate files quickly
 Foo frobnicates files
 with great speed.
 .
 It also bars.

Package: foo-doc
Description-md5: 2
Description-en: frobnicate files quickly
 Documentation for foo, which frobnicates files with great speed and care.

Package: bar
Description-md5: 3
Description-en: a bar tool
 Bar is a tool that does bar things to your files in a careful manner.

Package: bar-data
Description-md5: 4
Description-en: data for a bar tool
 Bar is a tool that does bar things to your files in a careful manner.

Package: baz
Description-md5: 5
Description-en: baz client for the terminal
 Baz is a terminal client that talks to baz servers over a network socket.

Package: tiny
Description-md5: 6
Description-en: tiny thing
 Too short.
"""


def test_parse_translations_renders_paragraphs():
    parsed = list(debian.parse_translations(iter(SAMPLE.splitlines(keepends=True))))
    assert parsed[0] == (
        "foo",
        "frobnicate files quickly",
        "Foo frobnicates files with great speed.\nIt also bars.",
    )
    assert [p[0] for p in parsed] == ["foo", "foo-doc", "bar", "bar-data", "baz", "tiny"]


def test_clean_drops_repeated_queries_shared_passages_and_stubs():
    parsed = {
        p: (short, long)
        for p, short, long in debian.parse_translations(iter(SAMPLE.splitlines(keepends=True)))
    }
    sources = debian.parse_sources(iter(["Package: baz\n", "Source: baz-src (1.0)\n", "\n"]))
    pairs = debian.clean(parsed, sources)
    # foo/foo-doc share a short description, bar/bar-data a long one, tiny is a stub.
    assert [p["package"] for p in pairs] == ["baz"]
    assert pairs[0]["source"] == "baz-src"


def test_cache_is_verified_and_rebuilt_when_corrupt(tmp_path, monkeypatch):
    monkeypatch.setenv("MATRYOSHKA_CACHE", str(tmp_path))
    builds = []
    rows = [{"anchor": "a", "positive": "b" * 50, "package": "p", "source": "p"}]
    release = {"origin": "Debian", "suite": "stable", "codename": "trixie", "date": "Sat, 1 Nov"}
    monkeypatch.setattr(debian, "build_pairs", lambda: builds.append(1) or (rows, [release]))
    assert debian.load_pairs() == rows and len(builds) == 1
    assert debian.load_pairs() == rows and len(builds) == 1  # from the cache
    assert debian.origin()["releases"] == [release]  # what was read, recorded beside it
    debian.cache_path().write_text('{"anchor": "tampered"}\n')
    assert debian.load_pairs() == rows and len(builds) == 2


def test_release_headers_are_read_from_a_signed_inrelease():
    lines = [
        "-----BEGIN PGP SIGNED MESSAGE-----\n",
        "Hash: SHA256\n",
        "\n",
        "Origin: Debian\n",
        "Label: Debian\n",
        "Suite: stable\n",
        "Codename: trixie\n",
        "Date: Sat, 08 Nov 2026 10:51:05 UTC\n",
        "SHA256:\n",
        " abc 123 main/Date: not-a-header\n",
    ]
    assert debian.parse_release(iter(lines)) == {
        "origin": "Debian",
        "suite": "stable",
        "codename": "trixie",
        "date": "Sat, 08 Nov 2026 10:51:05 UTC",
    }


def test_missing_apt_says_to_bring_your_own_data(monkeypatch):
    monkeypatch.setattr(debian.shutil, "which", lambda name: None)
    with pytest.raises(debian.DebianDataError, match="--data pairs.jsonl"):
        debian.build_pairs()


def test_real_debian_pairs_are_clean(debian_pairs):
    assert len(debian_pairs) > 40_000
    queries = [p["anchor"].casefold() for p in debian_pairs]
    passages = [p["positive"] for p in debian_pairs]
    assert len(set(queries)) == len(queries)
    assert len(set(passages)) == len(passages)
    assert all(len(p) >= debian.MIN_PASSAGE_CHARS for p in passages)
    assert len({p["source"] for p in debian_pairs}) < len(debian_pairs)  # siblings share a source
