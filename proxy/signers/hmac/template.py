"""The template syntax of `scheme: hmac`, parsed into parts (no meaning attached yet).

    template  := ( text | "{{" | "}}" | "{" expr "}" )*
    expr      := ( NAME [ ":" ARG ] | "params(" [ arg ( "," arg )* ] ")" ) ( "|" FILTER )*
    arg       := NAME "=" ( WORD | "quoted \\"string\\"" | "[" [ value ( "," value )* ] "]" )

`header:Name`, `query_param:name` and `form_param:name` take everything up to the next `|` or
`}` as their argument. Whether a name, filter or function exists is decided by the compiler,
which knows where the template sits in the config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WORD: Final = re.compile(r"[A-Za-z0-9_+.\-]+")
_ESCAPES: Final = {"\\": "\\", '"': '"', "n": "\n", "t": "\t", "r": "\r"}

ArgValue = str | bool | tuple[str, ...]


class TemplateSyntaxError(ValueError):
    """The template cannot be parsed; the message says where (a character offset)."""


@dataclass(frozen=True, slots=True)
class Text:
    value: str


@dataclass(frozen=True, slots=True)
class Ref:
    """`{name}`, `{header:X-Date}`, with filters applied left to right."""

    name: str
    arg: str | None
    filters: tuple[str, ...]

    def __str__(self) -> str:
        arg = f":{self.arg}" if self.arg is not None else ""
        return "{" + "|".join([self.name + arg, *self.filters]) + "}"


@dataclass(frozen=True, slots=True)
class Call:
    """`{params(from=query, sort=name)|pct}`."""

    function: str
    args: tuple[tuple[str, ArgValue], ...]
    filters: tuple[str, ...]

    def __str__(self) -> str:
        return "{" + "|".join([f"{self.function}(...)", *self.filters]) + "}"


Part = Text | Ref | Call


def parse_template(source: str) -> tuple[Part, ...]:
    """The parts of `source`, adjacent text merged."""
    return _Parser(source).parse()


class _Parser:
    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0

    def parse(self) -> tuple[Part, ...]:
        parts: list[Part] = []
        text: list[str] = []
        src = self.src
        while self.pos < len(src):
            char = src[self.pos]
            if char == "{" and src.startswith("{{", self.pos):
                text.append("{")
                self.pos += 2
            elif char == "}" and src.startswith("}}", self.pos):
                text.append("}")
                self.pos += 2
            elif char == "}":
                raise self.error("a lone '}' (write '}}' for a literal brace)")
            elif char == "{":
                if text:
                    parts.append(Text("".join(text)))
                    text = []
                self.pos += 1
                parts.append(self.expression())
            else:
                end = min((i for i in (src.find("{", self.pos), src.find("}", self.pos)) if i >= 0),
                          default=len(src))  # fmt: skip
                text.append(src[self.pos : end])
                self.pos = end
        if text:
            parts.append(Text("".join(text)))
        return tuple(parts)

    def error(self, message: str) -> TemplateSyntaxError:
        return TemplateSyntaxError(f"{message} at character {self.pos + 1}")

    def skip_space(self) -> None:
        while self.pos < len(self.src) and self.src[self.pos] in " \t":
            self.pos += 1

    def name(self, what: str) -> str:
        self.skip_space()
        found = _NAME.match(self.src, self.pos)
        if not found:
            raise self.error(f"expected {what}")
        self.pos = found.end()
        return found.group()

    def expect(self, char: str) -> None:
        self.skip_space()
        if not self.src.startswith(char, self.pos):
            raise self.error(f"expected '{char}'")
        self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.src[self.pos] if self.pos < len(self.src) else ""

    def expression(self) -> Ref | Call:
        name = self.name("a name inside '{...}' (write '{{' for a literal brace)")
        arg: str | None = None
        args: tuple[tuple[str, ArgValue], ...] | None = None
        if self.src.startswith(":", self.pos):
            end = min((i for i in (self.src.find("|", self.pos), self.src.find("}", self.pos))
                       if i >= 0), default=-1)  # fmt: skip
            if end < 0:
                raise self.error("an unclosed '{'")
            arg = self.src[self.pos + 1 : end].strip()
            if not arg:
                raise self.error(f"{name}: needs a name after ':'")
            self.pos = end
        elif self.peek() == "(":
            self.pos += 1
            args = self.arguments()
        filters = []
        while self.peek() == "|":
            self.pos += 1
            filters.append(self.name("a filter name after '|'"))
        if self.peek() != "}":
            raise self.error(
                "expected '|' or '}'" if self.pos < len(self.src) else "an unclosed '{'"
            )
        self.pos += 1
        if args is not None:
            return Call(name, args, tuple(filters))
        return Ref(name, arg, tuple(filters))

    def arguments(self) -> tuple[tuple[str, ArgValue], ...]:
        args: list[tuple[str, ArgValue]] = []
        if self.peek() == ")":
            self.pos += 1
            return ()
        while True:
            key = self.name("an argument name")
            if any(key == seen for seen, _ in args):
                raise self.error(f"argument {key} given twice")
            self.expect("=")
            args.append((key, self.value()))
            if self.peek() == ",":
                self.pos += 1
                continue
            self.expect(")")
            return tuple(args)

    def value(self) -> ArgValue:
        char = self.peek()
        if char == '"':
            return self.quoted()
        if char == "[":
            self.pos += 1
            items: list[str] = []
            if self.peek() == "]":
                self.pos += 1
                return ()
            while True:
                item = self.value()
                if not isinstance(item, str):
                    raise self.error("a list holds names or quoted strings")
                items.append(item)
                if self.peek() == ",":
                    self.pos += 1
                    continue
                self.expect("]")
                return tuple(items)
        found = _WORD.match(self.src, self.pos)
        if not found:
            raise self.error("expected a value (a word, a quoted string or a [list])")
        self.pos = found.end()
        word = found.group()
        return {"true": True, "false": False}.get(word, word)

    def quoted(self) -> str:
        self.pos += 1  # the opening quote
        out: list[str] = []
        while self.pos < len(self.src):
            char = self.src[self.pos]
            if char == '"':
                self.pos += 1
                return "".join(out)
            if char == "\\":
                escaped = self.src[self.pos + 1 : self.pos + 2]
                if escaped not in _ESCAPES:
                    raise self.error('unknown escape (use \\\\ \\" \\n \\t \\r)')
                out.append(_ESCAPES[escaped])
                self.pos += 2
                continue
            out.append(char)
            self.pos += 1
        raise self.error("an unclosed quoted string")
