"""Reading ERP exports (CSV, XLSX) for a new campaign, the column mapping, and pt-BR formatting."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from openpyxl import Workbook

from billing.dashboard import fmt
from billing.dashboard.upload import guess_mapping, read_sheet, to_contacts
from billing.domain.errors import InvalidValue


def test_a_semicolon_csv_in_latin1_with_a_blank_line_is_read() -> None:
    content = "Cliente;Celular;Valor\nJoão;(11) 98765-4321;1.234,56\n\n;;\nAna;11912345678;10\n".encode(
        "latin-1"
    )
    sheet = read_sheet("export.csv", content)
    assert sheet.columns == ["Cliente", "Celular", "Valor"]
    assert sheet.rows == [["João", "(11) 98765-4321", "1.234,56"], ["Ana", "11912345678", "10"]]


def test_an_xlsx_keeps_numbers_exact_and_dates_as_iso() -> None:
    book = Workbook()
    sheet = book.active
    sheet.append(["nome", "telefone", "valor", "vencimento"])
    sheet.append(["Maria", 11987654321, 1234.56, datetime(2026, 11, 5)])
    sheet.append(["Bia", "(21) 99876-5432", 10, date(2026, 11, 6)])
    out = io.BytesIO()
    book.save(out)
    read = read_sheet("export.XLSX", out.getvalue())
    assert read.rows == [
        ["Maria", 11987654321, "1234.56", "2026-11-05"],
        ["Bia", "(21) 99876-5432", 10, "2026-11-06"],
    ]


@pytest.mark.parametrize(
    ("name", "content"),
    [("a.csv", b""), ("a.csv", b"\n\n"), ("a.xlsx", b"not a zip"), ("a.csv", b"x\n" + b"1\n" * 10_001)],
)
def test_unusable_files_are_refused_naming_the_file(name: str, content: bytes) -> None:
    with pytest.raises(InvalidValue) as error:
        read_sheet(name, content)
    assert (error.value.code, error.value.field) == ("invalid_file", "file")


def test_mapping_guesses_known_columns_and_keeps_the_rest_as_variables() -> None:
    columns = ["Cliente", "Celular", "Valor", "Vencimento", "Número Fatura"]
    assert guess_mapping(columns) == {
        "Cliente": "nome",
        "Celular": "telefone",
        "Valor": "valor",
        "Vencimento": "data_vencimento",
        "Número Fatura": "número_fatura",
    }
    sheet = read_sheet("a.csv", b"Cliente;Celular;Obs\nAna;119;\n")
    assert to_contacts(sheet, {"Cliente": "nome", "Celular": "telefone", "Obs": "obs"}) == [
        {"nome": "Ana", "telefone": "119"}  # empty cells are left out
    ]
    with pytest.raises(InvalidValue) as error:
        to_contacts(sheet, {"Cliente": "nome", "Celular": "nome", "Obs": ""})
    assert error.value.code == "invalid_mapping"
    with pytest.raises(InvalidValue):
        to_contacts(sheet, {"Cliente": "nome", "Celular": "", "Obs": ""})


def test_pt_br_formats() -> None:
    sp = ZoneInfo("America/Sao_Paulo")
    assert fmt.money(Decimal("1234.56")) == "R$\xa01.234,56"
    assert fmt.day("2026-03-05") == "05/03/2026"
    assert fmt.instant(datetime(2026, 12, 2, 2, 30, tzinfo=UTC), sp) == "01/12/2026 23:30"
    assert fmt.number(1234567) == "1.234.567"
    assert fmt.percent(0.975) == "97,5%"
    assert fmt.percent(None) == "—"
    assert fmt.label("outside_business_hours", "pause") == "fora do horário comercial"
