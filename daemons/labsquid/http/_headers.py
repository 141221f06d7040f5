"""`Headers`: an ordered list of field lines with case-insensitive lookups.

Fields are kept as ``(lowercased name, name as received, value)`` triples: the
lowercased name makes every lookup a plain comparison, the received spelling is
what gets forwarded (some origins are picky about case), and order is kept
because RFC 9110 §5.3 makes the order of same-named fields significant.

Nothing here validates: readers only build `Headers` from validated bytes and
writers validate what they serialize.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

# RFC 9110 §7.6.1 hop-by-hop fields plus the ones squid also treats as such
# (HttpHeader.cc HopByHopHeadersMask): a proxy never forwards these.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authentication-info",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def _b(s: bytes | str) -> bytes:
    return s.encode("ascii") if isinstance(s, str) else bytes(s)


class Headers:
    __slots__ = ("_items",)

    def __init__(self, fields: Iterable[tuple[bytes | str, bytes | str]] = ()) -> None:
        items = []
        for name, value in fields:
            name = _b(name)
            items.append((name.lower(), name, _b(value)))
        self._items: list[tuple[bytes, bytes, bytes]] = items

    @classmethod
    def _from_items(cls, items: list[tuple[bytes, bytes, bytes]]) -> Headers:
        # The readers' fast path: items are already validated triples.
        self = cls.__new__(cls)
        self._items = items
        return self

    # -- sequence-ish protocol ---------------------------------------------------

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for _, name, value in self._items:
            yield name, value

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __contains__(self, name: bytes | str) -> bool:
        key = _b(name).lower()
        return any(lname == key for lname, _, _ in self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return list(self) == list(other)
        if isinstance(other, list):
            return list(self) == other
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"

    def raw_items(self) -> list[tuple[bytes, bytes, bytes]]:
        """The (lowercased name, name, value) triples themselves: read-only, for
        one-pass rewriting in the proxy's hot path."""
        return self._items

    def field_lines(self) -> list[bytes]:
        """``name: value`` for each field, as received (for fast serialisation)."""
        return [name + b": " + value for _, name, value in self._items]

    def copy(self) -> Headers:
        return Headers._from_items(list(self._items))

    def lowered(self) -> list[tuple[bytes, bytes]]:
        """(lowercased name, value) pairs: the shape h11 reports."""
        return [(lname, value) for lname, _, value in self._items]

    # -- lookups -----------------------------------------------------------------

    def get(self, name: bytes | str, default: bytes | None = None) -> bytes | None:
        """The first value of `name`; use `get_all`/`get_list` for repeated fields."""
        key = _b(name).lower()
        for lname, _, value in self._items:
            if lname == key:
                return value
        return default

    def first(self, lname: bytes) -> bytes | None:
        """`get` for a name already in lowercase bytes: the proxy's lookups."""
        for lower, _, value in self._items:
            if lower == lname:
                return value
        return None

    def get_all(self, name: bytes | str) -> list[bytes]:
        key = _b(name).lower()
        return [value for lname, _, value in self._items if lname == key]

    def collect(self, names: frozenset[bytes]) -> dict[bytes, list[bytes]]:
        """Values of several (lowercase) names in one pass: {name: [values]}."""
        found: dict[bytes, list[bytes]] = {}
        for lname, _, value in self._items:
            if lname in names:
                if lname in found:
                    found[lname].append(value)
                else:
                    found[lname] = [value]
        return found

    def count(self, name: bytes | str) -> int:
        key = _b(name).lower()
        return sum(1 for lname, _, _ in self._items if lname == key)

    def get_list(self, name: bytes | str) -> list[bytes]:
        """Elements of a list-valued field (RFC 9110 §5.6.1) over all its lines.

        Splits on commas and drops empty elements, as recipients must. Meant
        for token lists (Connection, TE, Vary...): a quoted string holding a
        comma is not special-cased.
        """
        out = []
        for value in self.get_all(name):
            for element in value.split(b","):
                element = element.strip(b" \t")
                if element:
                    out.append(element)
        return out

    def has_token(self, name: bytes | str, token: bytes | str) -> bool:
        """Whether list field `name` has element `token` (case-insensitive)."""
        token = _b(token).lower()
        return any(element.lower() == token for element in self.get_list(name))

    # -- edits -------------------------------------------------------------------

    def add(self, name: bytes | str, value: bytes | str) -> None:
        name = _b(name)
        self._items.append((name.lower(), name, _b(value)))

    def set(self, name: bytes | str, value: bytes | str) -> None:
        """Replace every `name` line by one, at the position of the first."""
        name = _b(name)
        key = name.lower()
        new = (key, name, _b(value))
        out = []
        for item in self._items:
            if item[0] == key:
                if new is not None:
                    out.append(new)
                    new = None
            else:
                out.append(item)
        if new is not None:
            out.append(new)
        self._items = out

    def remove(self, name: bytes | str) -> int:
        """Drop every `name` line; returns how many there were."""
        key = _b(name).lower()
        before = len(self._items)
        self._items = [item for item in self._items if item[0] != key]
        return before - len(self._items)

    def remove_hop_by_hop(self, connection_tokens: Iterable[bytes] | None = None) -> None:
        """Strip what a proxy must not forward (RFC 9110 §7.6.1).

        That is the fixed hop-by-hop set plus every field the Connection
        header names; pass `connection_tokens` when the caller already read
        them (e.g. to decide keep-alive) to save a second parse.
        """
        if connection_tokens is None:
            connection_tokens = self.get_list(b"connection")
        drop = HOP_BY_HOP.union(_b(t).lower() for t in connection_tokens)
        self._items = [item for item in self._items if item[0] not in drop]
