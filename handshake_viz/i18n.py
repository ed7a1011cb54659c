"""Translations: standard gettext catalogs kept in the package.

``handshake_viz/locale/hsviz.pot`` holds the English messages, the text every
translation starts from: each message's msgctxt is its key (what the code names it
by, :data:`handshake_viz.explain.MESSAGES`) and its msgid the English text.
``handshake_viz/locale/LANG/LC_MESSAGES/hsviz.po`` is the source a translator edits;
``hsviz.mo`` beside it is what :mod:`gettext` loads.  A translation is keyed by
msgctxt and msgid both, so a changed English sentence shows up as a missing
translation.

The ``.mo`` files are committed, compiled by this module (no GNU gettext tools
needed, nothing compiled at install time, no new dependency)::

    python -m handshake_viz.i18n            # remake every .mo from its .po
    python -m handshake_viz.i18n --update   # bring every .po to hsviz.pot (new messages with an empty msgstr, gone ones dropped)
    python -m handshake_viz.i18n --check    # exit 1 if a .mo is not what its .po compiles to

``tests/test_explain.py`` checks that the committed ``.mo`` files are exactly what the
``.po`` files compile to, and that every message has a translation naming the same
placeholders (so the same frames and calls).
"""

from __future__ import annotations

import ast
import functools
import gettext
import os
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOMAIN", "LANGUAGES", "LOCALE_DIR", "TEMPLATE", "PoEntry", "default_lang", "english_messages",
           "make_mo", "parse_po", "translate"]

DOMAIN = "hsviz"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
#: The English messages: the gettext template every LANG's .po translates.
TEMPLATE = LOCALE_DIR / f"{DOMAIN}.pot"
#: Languages with a catalog, besides English (the messages themselves).
LANGUAGES = ("en", "zh")


def default_lang(environ: dict[str, str] | None = None) -> str:
    """``zh`` when the locale asks for Chinese (LANGUAGE, LC_ALL, LC_MESSAGES, LANG, in
    gettext's order), else ``en``."""
    env = os.environ if environ is None else environ
    for var in ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var)
        if value:
            first = value.split(":")[0].lower()
            return "zh" if first.startswith("zh") else "en"
    return "en"


@functools.lru_cache(maxsize=None)
def translate(lang: str) -> Callable[[str, str], str]:
    """``translate("zh")(key, english)``: the message in ``lang`` (English when the
    catalog lacks it)."""
    if lang == "en":
        return lambda key, english: english
    if lang not in LANGUAGES:
        from handshake_viz.errors import UsageError

        raise UsageError(f"--lang {lang}: choose one of {', '.join(LANGUAGES)}")
    catalog = gettext.translation(DOMAIN, LOCALE_DIR, languages=[lang])
    return catalog.pgettext


@dataclass(frozen=True, slots=True)
class PoEntry:
    msgctxt: str | None
    msgid: str
    msgstr: str


def english_messages() -> dict[str, str]:
    """Every message's English text by its key (msgctxt), in the template's order."""
    entries = parse_po(TEMPLATE.read_text(encoding="utf-8"))
    return {e.msgctxt: e.msgid for e in entries if e.msgctxt is not None}


def _unquote(line: str) -> str:
    return ast.literal_eval(line)  # type: ignore[no-any-return]  # a C string in double quotes


def parse_po(text: str) -> list[PoEntry]:
    """The entries of a ``.po`` file (msgctxt, msgid, msgstr; comments and obsolete
    entries skipped; plural forms are not used here)."""
    entries: list[PoEntry] = []
    cur: dict[str, str] = {}
    field: str | None = None

    def flush() -> None:
        if "msgid" in cur:
            entries.append(PoEntry(cur.get("msgctxt"), cur["msgid"], cur.get("msgstr", "")))
        cur.clear()

    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            if not line and "msgstr" in cur:
                flush()
                field = None
            continue
        if line.startswith('"'):
            if field is None:
                raise ValueError(f"a continued string with no keyword: {raw!r}")
            cur[field] += _unquote(line)
            continue
        keyword, _, rest = line.partition(" ")
        if keyword not in ("msgctxt", "msgid", "msgstr"):
            raise ValueError(f"unknown keyword {keyword!r}")
        if keyword in ("msgctxt", "msgid") and "msgstr" in cur:
            flush()
        field = keyword
        cur[field] = _unquote(rest.strip())
    flush()
    return entries


def make_mo(entries: Iterable[PoEntry]) -> bytes:
    """GNU ``.mo`` bytes (little-endian, no hash table) for these entries, as ``msgfmt``
    would write them: untranslated entries are left out, keys sorted."""
    table: dict[bytes, bytes] = {}
    for e in entries:
        if not e.msgstr and e.msgid:
            continue
        key = e.msgid if e.msgctxt is None else f"{e.msgctxt}\x04{e.msgid}"
        table[key.encode()] = e.msgstr.encode()
    keys = sorted(table)
    n = len(keys)
    header = 7 * 4
    ids_at = header
    strs_at = ids_at + 8 * n
    data_at = strs_at + 8 * n
    ids = b"".join(k + b"\0" for k in keys)
    strs = b"".join(table[k] + b"\0" for k in keys)
    id_index, str_index = [], []
    offset = data_at
    for k in keys:
        id_index.append((len(k), offset))
        offset += len(k) + 1
    for k in keys:
        str_index.append((len(table[k]), offset))
        offset += len(table[k]) + 1
    out = struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, data_at)
    out += b"".join(struct.pack("<2I", *x) for x in id_index)
    out += b"".join(struct.pack("<2I", *x) for x in str_index)
    return out + ids + strs


def _quote(s: str) -> str:
    body = s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{body}"'


def write_po(entries: Sequence[PoEntry], lang: str) -> str:
    """A ``.po`` file's text for these entries (header first)."""
    header = f"Content-Type: text/plain; charset=UTF-8\nLanguage: {lang}\n"
    out = [f"# hsviz messages, {lang}. Edit the msgstr lines; remake the .mo with: python -m handshake_viz.i18n",
           'msgid ""', f"msgstr {_quote(header)}", ""]
    for e in entries:
        if not e.msgid:
            continue
        if e.msgctxt is not None:
            out.append(f"msgctxt {_quote(e.msgctxt)}")
        out += [f"msgid {_quote(e.msgid)}", f"msgstr {_quote(e.msgstr)}", ""]
    return "\n".join(out)


def _po_paths() -> list[Path]:
    return sorted(LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--update"]:
        messages = english_messages()
        for po in _po_paths():
            old = {(e.msgctxt, e.msgid): e.msgstr for e in parse_po(po.read_text(encoding="utf-8"))}
            entries = [PoEntry(k, v, old.get((k, v), "")) for k, v in messages.items()]
            po.write_text(write_po(entries, po.parents[1].name), encoding="utf-8")
            missing = sum(not e.msgstr for e in entries)
            print(f"{po}: {len(entries)} messages, {missing} to translate")
        args = []
    stale = 0
    for po in _po_paths():
        mo = po.with_suffix(".mo")
        want = make_mo(parse_po(po.read_text(encoding="utf-8")))
        if args == ["--check"]:
            if not mo.is_file() or mo.read_bytes() != want:
                print(f"{mo}: stale (run python -m handshake_viz.i18n)")
                stale += 1
        elif not args:
            mo.write_bytes(want)
            print(f"wrote {mo}")
        else:
            print("usage: python -m handshake_viz.i18n [--update | --check]", file=sys.stderr)
            return 2
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
