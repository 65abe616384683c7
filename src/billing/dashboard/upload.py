"""Reading an ERP export for a new campaign: CSV (``csv`` module, delimiter sniffed, UTF-8 with or
without BOM, else Latin-1) or XLSX (``openpyxl``, first sheet), first row the column names; and turning
rows into contacts through a column mapping."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from billing.domain.errors import InvalidValue

MAX_ROWS = 10_000  # a campaign is one batch: the public API's limit
MAX_BYTES = 5_000_000
KNOWN_FIELDS = ("nome", "telefone", "valor", "valor_total", "data_vencimento")
INVOICE_FIELD = "external_id"
"""The contact field of its own invoice reference (``billing.services.ingest.invoice_ref``: else the
batch's): the history and the cancel by invoice find the contact by it."""
_GUESSES = {
    "nome": ("nome", "cliente", "name", "razao_social", "razão social"),
    "telefone": ("telefone", "celular", "fone", "whatsapp", "phone"),
    "valor": ("valor", "amount", "valor_fatura"),
    "valor_total": ("valor_total", "total"),
    "data_vencimento": ("data_vencimento", "vencimento", "due_date", "data"),
}


@dataclass(frozen=True)
class Sheet:
    """The columns (first row) and the data rows (each as long as ``columns``; values are text, numbers
    or ISO dates)."""

    columns: list[str]
    rows: list[list[Any]]


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return str(Decimal(repr(value)))  # 1234.5 -> "1234.5", never a binary float
    if value is None:
        return ""
    return value if isinstance(value, int | str) else str(value)


def read_sheet(filename: str, content: bytes) -> Sheet:
    """Parse an upload by its extension (``.xlsx``, else CSV).

    Raises:
        InvalidValue: ``invalid_file`` (empty, too big, unreadable, no header, more than 10,000 rows),
            naming ``file``.
    """
    if not content:
        raise InvalidValue("o arquivo está vazio", code="invalid_file", field="file")
    if len(content) > MAX_BYTES:
        raise InvalidValue("o arquivo passa de 5 MB", code="invalid_file", field="file")
    table = _read_xlsx(content) if filename.lower().endswith(".xlsx") else _read_csv(content)
    table = [row for row in table if any(str(v).strip() for v in row)]
    if not table:
        raise InvalidValue("o arquivo não tem linhas", code="invalid_file", field="file")
    columns = [str(c).strip() for c in table[0]]
    if not any(columns):
        raise InvalidValue(
            "a primeira linha deve ter os nomes das colunas", code="invalid_file", field="file"
        )
    rows = [(list(r) + [""] * len(columns))[: len(columns)] for r in table[1:]]
    if len(rows) > MAX_ROWS:
        raise InvalidValue(f"no máximo {MAX_ROWS} linhas por campanha", code="invalid_file", field="file")
    return Sheet(columns=columns, rows=rows)


def _read_csv(content: bytes) -> list[list[Any]]:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = content.decode("latin-1")
    try:
        dialect: Any = csv.Sniffer().sniff(text[:4096], delimiters=";,\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        return [list(r) for r in csv.reader(io.StringIO(text), dialect)]
    except csv.Error as exc:
        raise InvalidValue(f"CSV ilegível: {exc}", code="invalid_file", field="file") from None


def _read_xlsx(content: bytes) -> list[list[Any]]:
    from openpyxl import load_workbook

    try:
        book = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many types for a damaged file
        raise InvalidValue(
            f"XLSX ilegível: {type(exc).__name__}", code="invalid_file", field="file"
        ) from None
    try:
        sheet = book.worksheets[0]
        return [[_cell(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def guess_mapping(columns: Sequence[str]) -> dict[str, str]:
    """A first mapping ``{column: field}``: known names to their field, every other column to itself
    (an extra template variable) — the admin corrects it on the page."""
    mapping: dict[str, str] = {}
    taken: set[str] = set()
    for column in columns:
        key = column.strip().lower().replace(" ", "_")
        field = next((f for f, names in _GUESSES.items() if key in names and f not in taken), None)
        mapping[column] = field or key
        if field:
            taken.add(field)
    return mapping


def to_contacts(
    sheet: Sheet, mapping: Mapping[str, str], invoice_column: int | None = None
) -> list[dict[str, Any]]:
    """Contacts for the ingestion service: each row's mapped columns under their field name (a column
    mapped to ``""`` is left out; empty cells are left out). ``invoice_column`` (an index of
    ``sheet.columns``) also feeds :data:`INVOICE_FIELD`, the contact's own invoice reference, as text:
    one column can be both a template variable (``numero_fatura``) and the invoice.

    Raises:
        InvalidValue: ``invalid_mapping`` when two columns map to one field (the invoice column counts as
            mapped to ``external_id``), ``invoice_column`` is not a column, or no column is ``telefone``.
    """
    fields = [mapping.get(c, "").strip() for c in sheet.columns]
    used = [f for f in fields if f]
    if invoice_column is not None:
        if not 0 <= invoice_column < len(sheet.columns):
            raise InvalidValue("coluna da fatura inexistente", code="invalid_mapping", field="mapping")
        if fields[invoice_column] != INVOICE_FIELD:  # mapped to it already: one use, not two
            used.append(INVOICE_FIELD)
    if len(used) != len(set(used)):
        raise InvalidValue("duas colunas para o mesmo campo", code="invalid_mapping", field="mapping")
    if "telefone" not in used:
        raise InvalidValue("escolha a coluna do telefone", code="invalid_mapping", field="mapping")
    contacts = []
    for row in sheet.rows:
        contact: dict[str, Any] = {}
        for name, value in zip(fields, row, strict=True):
            if name and str(value).strip():
                contact[name] = value
        if invoice_column is not None and str(row[invoice_column]).strip():
            contact[INVOICE_FIELD] = str(row[invoice_column]).strip()
        contacts.append(contact)
    return contacts
