"""A small, strict template engine for WhatsApp message bodies (a Handlebars subset).

Supported syntax::

    {{nome}}  {{ nome }}                       variable (nothing is ever escaped)
    {{#if v}}...{{else}}...{{/if}}             condition, Handlebars truthiness (see :func:`is_truthy`)
    {{#unless v}}...{{else}}...{{/unless}}     negated condition
    {{! comment }}  {{!-- may contain }} --}}  comments, rendered as nothing

Blocks nest. Variable names are identifiers made of Unicode letters, digits and ``_``, not starting
with a digit (``último_vencimento`` is fine); they are compared in Unicode NFC form. Everything else
Handlebars offers (helpers, ``#each``, ``#with``, partials, ``{{{x}}}``, ``{{&x}}``, ``{{else if}}``,
dotted paths, whitespace control ``~``...) is refused when the template is parsed, with the line and
column of the offending tag, so a bad template is caught when it is saved, never at send time.

A block tag or comment alone on its line (only spaces/tabs around it) removes that whole line,
newline included: the standalone-line rule of Mustache/Handlebars. Variable tags are never standalone.

The source is split by a tokenizer, the tokens are parsed by recursive descent into an AST
(:class:`Text`, :class:`Var`, :class:`If`, :class:`Unless`), and rendering walks the AST. Values are
inserted verbatim and never re-parsed.
"""

from __future__ import annotations

import decimal
import numbers
import unicodedata
from collections.abc import Mapping, Sized
from dataclasses import dataclass
from typing import Literal, TypeAlias

from billing.domain.errors import DomainError

__all__ = [
    "MAX_NESTING",
    "SYNTAX_ERROR_KINDS",
    "If",
    "Node",
    "Template",
    "TemplateSyntaxError",
    "Text",
    "Unless",
    "Var",
    "is_truthy",
    "parse_template",
]

MAX_NESTING = 32
"""Deepest allowed nesting of ``#if``/``#unless`` blocks (keeps parsing and rendering recursion bounded)."""

_RESERVED = frozenset(
    {"else", "this", "true", "false", "null", "undefined", "if", "unless", "each", "with", "lookup", "log"}
)
_BLANK = " \t"


class TemplateSyntaxError(DomainError):
    """The template cannot be parsed.

    Attributes:
        line: 1-based line of the start of the offending tag (lines end at ``\\n``).
        column: 1-based column of that tag start, counted in Unicode code points.
        reason: the message without its position prefix.
        kind: which refusal it is, for a caller that words it in another language (one of
            :data:`SYNTAX_ERROR_KINDS`; ``"syntax"`` when not told).
        params: the parts of the template that refusal is about (``tag``: the offending tag as shown in
            ``reason``; ``name``: a variable name as written; ``block``: ``"if"``/``"unless"``;
            ``opened_line``/``opened_column``: where that block opened; ``limit``: a bound).

    ``message`` reads ``"line 1, column 5: unclosed tag '{{'"``; ``details`` is
    ``{"line": 1, "column": 5}`` (``kind`` and ``params`` are not in ``details``: the API's body is the
    same).
    """

    code = "template_error"

    def __init__(
        self,
        reason: str,
        *,
        line: int,
        column: int,
        kind: str = "syntax",
        params: Mapping[str, str | int] | None = None,
    ) -> None:
        super().__init__(
            f"line {line}, column {column}: {reason}",
            details={"line": line, "column": column},
        )
        self.line = line
        self.column = column
        self.reason = reason
        self.kind = kind
        self.params: dict[str, str | int] = dict(params or {})


SYNTAX_ERROR_KINDS = (
    "unclosed_comment",
    "triple_stash",
    "unclosed_tag",
    "empty_tag",
    "whitespace_control",
    "block_without_name",
    "unsupported_block",
    "block_arguments",
    "unsupported_closing",
    "partial",
    "ampersand",
    "inverse_section",
    "else_arguments",
    "helper",
    "path",
    "reserved_word",
    "invalid_name",
    "else_outside_block",
    "close_without_open",
    "nesting_too_deep",
    "second_else",
    "unclosed_block",
    "mismatched_close",
)
"""The ``kind`` of every :class:`TemplateSyntaxError` the parser raises."""


# --------------------------------------------------------------------------------------------- AST


@dataclass(frozen=True, slots=True)
class Text:
    """Literal text, emitted as is."""

    text: str


@dataclass(frozen=True, slots=True)
class Var:
    """``{{name}}``: the variable's value, or ``""`` when it is missing or None."""

    name: str


@dataclass(frozen=True, slots=True)
class If:
    """``{{#if name}}then{{else}}otherwise{{/if}}``."""

    name: str
    then: tuple[Node, ...]
    otherwise: tuple[Node, ...] = ()


@dataclass(frozen=True, slots=True)
class Unless:
    """``{{#unless name}}then{{else}}otherwise{{/unless}}``: ``then`` renders when ``name`` is falsy."""

    name: str
    then: tuple[Node, ...]
    otherwise: tuple[Node, ...] = ()


Node: TypeAlias = Text | Var | If | Unless


# ------------------------------------------------------------------------------------------ values


def is_truthy(value: object) -> bool:
    """Handlebars truthiness, as ``{{#if}}`` sees it.

    False for None (and missing variables), False, numeric zero (int, float, Decimal, ...), NaN (as in
    JavaScript), ``""`` and empty containers (list, dict, tuple, set...). Everything else is true,
    including the string ``"0"``, ``"false"`` and whitespace. Never raises: an object whose length or
    comparison fails counts as true.
    """
    try:
        if value is None or value is False:
            return False
        if value is True:
            return True
        if isinstance(value, str):
            return value != ""
        if isinstance(value, decimal.Decimal):
            return not (value.is_zero() or value.is_nan())
        if isinstance(value, numbers.Number):
            number: object = value
            return bool(number == number and number != 0)  # number != number only for NaN
        if isinstance(value, Sized):
            return len(value) != 0
    except Exception:
        return True
    return True


def _to_text(value: object) -> str:
    """How a value is written: None → "", True/False → "true"/"false", anything else ``str()``."""
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return str.__str__(value)
    try:
        return str(value)
    except Exception:
        # render() must not raise; a value that cannot be shown is treated like a missing one.
        return ""


def _lookup(variables: Mapping[str, object], name: str) -> object:
    """The value of ``name`` (NFC), also matching keys given in another normalization form; None if absent."""
    try:
        if name in variables:
            return variables[name]
        for key, value in variables.items():
            if isinstance(key, str) and unicodedata.normalize("NFC", key) == name:
                return value
    except Exception:
        return None
    return None


# ---------------------------------------------------------------------------------------- template


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template. Build it with :func:`parse_template`; it is immutable.

    Attributes:
        source: the original text, unchanged.
        body: the AST, a tuple of :data:`Node`.
        variables: every variable name referenced (as ``{{x}}`` or as a condition), NFC.
        required_variables: names written as ``{{x}}`` outside any ``#if``/``#unless`` block: a message
            lacking one of them would have a hole. Names used only as conditions or inside blocks are
            not required.
    """

    source: str
    body: tuple[Node, ...]
    variables: frozenset[str]
    required_variables: frozenset[str]

    def render(self, variables: Mapping[str, object]) -> str:
        """Render with ``variables`` (name → value). Never raises, whatever the values.

        Values are inserted verbatim (no escaping, never re-parsed); missing names and None render
        as ``""``; True/False as ``"true"``/``"false"``; other values through ``str()``.
        """
        out: list[str] = []
        _render(self.body, variables, out)
        return "".join(out)

    def missing_variables(self, variables: Mapping[str, object]) -> list[str]:
        """Required names (in order of first use) whose value is absent, None or a blank string.

        E.g. ``"Olá {{nome}}, {{valor}}"`` with ``{"nome": "Ana"}`` → ``["valor"]``.
        """
        missing: list[str] = []
        for node in self.body:
            if isinstance(node, Var) and node.name not in missing:
                value = _lookup(variables, node.name)
                if value is None or (isinstance(value, str) and not value.strip()):
                    missing.append(node.name)
        return missing


def _render(nodes: tuple[Node, ...], variables: Mapping[str, object], out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, Text):
            out.append(node.text)
        elif isinstance(node, Var):
            out.append(_to_text(_lookup(variables, node.name)))
        else:
            condition = is_truthy(_lookup(variables, node.name))
            if isinstance(node, Unless):
                condition = not condition
            _render(node.then if condition else node.otherwise, variables, out)


def parse_template(source: str) -> Template:
    """Parse ``source`` into a :class:`Template`.

    Raises:
        TemplateSyntaxError: unclosed ``{{``, unsupported construct, invalid variable name,
            unbalanced or mismatched blocks, ``{{else}}`` outside a block, blocks nested deeper than
            :data:`MAX_NESTING`. ``line``/``column`` point at the start of the offending tag.
    """
    tokens = _strip_standalone_lines(_tokenize(source))
    body = _Parser(source, tokens).parse()
    names: set[str] = set()
    _collect_names(body, names)
    required = frozenset(node.name for node in body if isinstance(node, Var))
    return Template(source=source, body=body, variables=frozenset(names), required_variables=required)


def _collect_names(nodes: tuple[Node, ...], into: set[str]) -> None:
    for node in nodes:
        if isinstance(node, Var):
            into.add(node.name)
        elif isinstance(node, If | Unless):
            into.add(node.name)
            _collect_names(node.then, into)
            _collect_names(node.otherwise, into)


# --------------------------------------------------------------------------------------- tokenizer

_Kind = Literal["text", "var", "open", "else", "close", "comment"]
_STANDALONE_KINDS = frozenset({"open", "else", "close", "comment"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: _Kind
    pos: int  # offset of the tag start (or of the text) in the source
    value: str = ""  # text: the text; var: the name; open/close: "if" or "unless"
    name: str = ""  # open: the condition's variable


def _position(source: str, pos: int) -> tuple[int, int]:
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return line, column


def _error(source: str, pos: int, reason: str, kind: str, **params: str | int) -> TemplateSyntaxError:
    line, column = _position(source, pos)
    return TemplateSyntaxError(reason, line=line, column=column, kind=kind, params=params)


def _shown(tag_inner: str) -> str:
    text = tag_inner.strip()
    if len(text) > 40:
        text = text[:37] + "..."
    return "'{{" + text + "}}'"


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(source):
        start = source.find("{{", i)
        if start < 0:
            tokens.append(_Token("text", i, source[i:]))
            break
        if start > i:
            tokens.append(_Token("text", i, source[i:start]))
        if source.startswith("{{!--", start):
            end = source.find("--}}", start + 3)  # "{{!--}}" is a (empty) comment, as in Handlebars
            if end < 0:
                raise _error(
                    source,
                    start,
                    "unclosed comment '{{!--' (it must end with '--}}')",
                    "unclosed_comment",
                    tag="{{!--",
                )
            tokens.append(_Token("comment", start))
            i = end + 4
            continue
        if source.startswith("{{!", start):
            end = source.find("}}", start + 3)
            if end < 0:
                raise _error(
                    source,
                    start,
                    "unclosed comment '{{!' (it must end with '}}')",
                    "unclosed_comment",
                    tag="{{!",
                )
            tokens.append(_Token("comment", start))
            i = end + 2
            continue
        if source.startswith("{{{", start):
            raise _error(
                source,
                start,
                "'{{{' (triple-stash) is not supported: nothing is escaped, use '{{name}}'",
                "triple_stash",
            )
        end = source.find("}}", start + 2)
        inner = source[start + 2 : end] if end >= 0 else ""
        if end < 0 or "{{" in inner or "\n" in inner:
            raise _error(source, start, "unclosed tag '{{'", "unclosed_tag")
        tokens.append(_classify(source, start, inner))
        i = end + 2
    return tokens


def _classify(source: str, start: int, inner: str) -> _Token:
    """Turn the text between ``{{`` and ``}}`` into a token, refusing anything unsupported."""
    text = inner.strip()
    if not text:
        raise _error(source, start, "empty tag '{{}}'", "empty_tag")
    if text.startswith("~") or text.endswith("~"):
        raise _error(
            source,
            start,
            f"whitespace control '~' is not supported: {_shown(inner)}",
            "whitespace_control",
            tag=_shown(inner),
        )
    sigil = text[0]
    if sigil == "#":
        words = text[1:].split()
        if not words:
            raise _error(source, start, "block tag '{{#}}' without a name", "block_without_name")
        block, args = words[0], words[1:]
        if block not in ("if", "unless"):
            raise _error(
                source,
                start,
                f"unsupported block {_shown('#' + block)}: only #if and #unless exist",
                "unsupported_block",
                tag=_shown("#" + block),
            )
        if len(args) != 1:
            raise _error(
                source,
                start,
                f"{_shown('#' + block)} takes exactly one variable name: {_shown(inner)}",
                "block_arguments",
                block=block,
                tag=_shown(inner),
            )
        return _Token("open", start, block, _check_name(source, start, args[0]))
    if sigil == "/":
        words = text[1:].split()
        if len(words) != 1 or words[0] not in ("if", "unless"):
            raise _error(
                source,
                start,
                f"unsupported closing tag {_shown(inner)}: only /if and /unless exist",
                "unsupported_closing",
                tag=_shown(inner),
            )
        return _Token("close", start, words[0])
    if sigil == ">":
        raise _error(
            source, start, f"partials are not supported: {_shown(inner)}", "partial", tag=_shown(inner)
        )
    if sigil == "&":
        raise _error(
            source,
            start,
            f"'{{{{&' is not supported (nothing is escaped): {_shown(inner)}",
            "ampersand",
            tag=_shown(inner),
        )
    if sigil == "^":
        raise _error(
            source,
            start,
            f"inverse sections are not supported, use {{{{#unless}}}}: {_shown(inner)}",
            "inverse_section",
            tag=_shown(inner),
        )
    words = text.split()
    if words[0] == "else":
        if len(words) == 1:
            return _Token("else", start)
        raise _error(
            source,
            start,
            f"{_shown(inner)} is not supported: nest an {{{{#if}}}} inside {{{{else}}}}",
            "else_arguments",
            tag=_shown(inner),
        )
    if len(words) > 1:
        raise _error(
            source, start, f"helpers are not supported: {_shown(inner)}", "helper", tag=_shown(inner)
        )
    return _Token("var", start, _check_name(source, start, text))


def _check_name(source: str, start: int, raw: str) -> str:
    name = unicodedata.normalize("NFC", raw)
    if any(c in name for c in "./[]@"):
        raise _error(
            source,
            start,
            f"paths such as {raw!r} are not supported, only plain variable names",
            "path",
            name=raw,
        )
    if name in _RESERVED:
        raise _error(
            source, start, f"{raw!r} is a reserved word, not a variable name", "reserved_word", name=raw
        )
    if not _is_identifier(name):
        raise _error(
            source,
            start,
            f"invalid variable name {raw!r}: use letters, digits and '_', not starting with a digit",
            "invalid_name",
            name=raw,
        )
    return name


def _is_identifier(name: str) -> bool:
    if not name or not (name[0].isalpha() or name[0] == "_"):
        return False
    return all(
        c.isalpha() or c.isdecimal() or c == "_" or unicodedata.category(c) in ("Mn", "Mc") for c in name[1:]
    )


def _strip_standalone_lines(tokens: list[_Token]) -> list[_Token]:
    """Apply the standalone-line rule: a block tag or comment alone on its line takes the line with it.

    A tag is standalone when the text before it, back to the previous newline (or the template start),
    and the text after it, up to and including the next newline (or the template end), hold only spaces
    and tabs. Decisions are taken on the original tokens, then the surrounding whitespace is removed.
    """
    last = len(tokens) - 1
    strip_head: set[int] = set()  # text tokens losing their leading "[ \t]*\r?\n"
    strip_tail: set[int] = set()  # text tokens losing their trailing "[ \t]*"
    for i, tok in enumerate(tokens):
        if tok.kind not in _STANDALONE_KINDS:
            continue
        if i == 0:
            before = True
        else:
            prev = tokens[i - 1]
            newline = prev.value.rfind("\n")
            before = (
                prev.kind == "text"
                and prev.value[newline + 1 :].strip(_BLANK) == ""
                and (newline >= 0 or i == 1)
            )
        if i == last:
            after = True
        else:
            nxt = tokens[i + 1]
            rest = nxt.value.lstrip(_BLANK)
            after = nxt.kind == "text" and (rest.startswith(("\n", "\r\n")) or (rest == "" and i + 1 == last))
        if before and after:
            if i > 0:
                strip_tail.add(i - 1)
            if i < last:
                strip_head.add(i + 1)
    if not strip_head and not strip_tail:
        return tokens
    result: list[_Token] = []
    for i, tok in enumerate(tokens):
        text = tok.value
        if i in strip_head:
            text = text.lstrip(_BLANK)
            text = text[2:] if text.startswith("\r\n") else text[1:]  # empty at the template end
        if i in strip_tail:
            text = text.rstrip(_BLANK)
        if i in strip_head or i in strip_tail:
            if text:
                result.append(_Token("text", tok.pos, text))
        else:
            result.append(tok)
    return result


# ------------------------------------------------------------------------------------------ parser


class _Parser:
    """Recursive descent over the tokens: body := (text | var | comment | block)*,
    block := open body (else body)? close, with matching open/close kinds."""

    def __init__(self, source: str, tokens: list[_Token]) -> None:
        self._source = source
        self._tokens = tokens
        self._i = 0

    def parse(self) -> tuple[Node, ...]:
        body, end = self._body(0)
        if end is not None:
            if end.kind == "else":
                raise _error(
                    self._source,
                    end.pos,
                    "'{{else}}' outside an {{#if}} or {{#unless}} block",
                    "else_outside_block",
                )
            raise _error(
                self._source,
                end.pos,
                f"'{{{{/{end.value}}}}}' without a matching '{{{{#{end.value}}}}}'",
                "close_without_open",
                block=end.value,
            )
        return body

    def _body(self, depth: int) -> tuple[tuple[Node, ...], _Token | None]:
        """Nodes up to the next ``{{else}}``/closing tag (returned) or the end of the tokens (None)."""
        nodes: list[Node] = []
        while self._i < len(self._tokens):
            tok = self._tokens[self._i]
            self._i += 1
            if tok.kind == "text":
                if nodes and isinstance(nodes[-1], Text):
                    nodes[-1] = Text(nodes[-1].text + tok.value)
                else:
                    nodes.append(Text(tok.value))
            elif tok.kind == "var":
                nodes.append(Var(tok.value))
            elif tok.kind == "open":
                nodes.append(self._block(tok, depth + 1))
            elif tok.kind in ("else", "close"):
                return tuple(nodes), tok
            # comments produce nothing
        return tuple(nodes), None

    def _block(self, opening: _Token, depth: int) -> Node:
        src = self._source
        if depth > MAX_NESTING:
            raise _error(
                src,
                opening.pos,
                f"blocks nested deeper than {MAX_NESTING} levels",
                "nesting_too_deep",
                limit=MAX_NESTING,
            )
        line, column = _position(src, opening.pos)
        opened = f"'{{{{#{opening.value}}}}}' opened at line {line}, column {column}"
        where: dict[str, str | int] = {"block": opening.value, "opened_line": line, "opened_column": column}
        then, end = self._body(depth)
        otherwise: tuple[Node, ...] = ()
        if end is not None and end.kind == "else":
            otherwise, end = self._body(depth)
            if end is not None and end.kind == "else":
                raise _error(src, end.pos, f"second '{{{{else}}}}' in the {opened}", "second_else", **where)
        if end is None:
            raise _error(
                src,
                opening.pos,
                f"{opened} is never closed with '{{{{/{opening.value}}}}}'",
                "unclosed_block",
                **where,
            )
        if end.value != opening.value:
            raise _error(
                src,
                end.pos,
                f"'{{{{/{end.value}}}}}' does not close the {opened}",
                "mismatched_close",
                closing=end.value,
                **where,
            )
        if opening.value == "if":
            return If(opening.name, then, otherwise)
        return Unless(opening.name, then, otherwise)
