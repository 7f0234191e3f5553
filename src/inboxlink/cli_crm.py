"""CLI commands of the CRM side: `records add`, `timeline`, `send`. Registered on the main app by
`inboxlink.cli`; the same stable-contract rules apply (JSON with --json, one-line errors, exit 1)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from inboxlink.crm.access import SYSTEM
from inboxlink.crm.records import RecordInput
from inboxlink.errors import ValidationError

records_app = typer.Typer(help="People, companies and deals.", no_args_is_help=True)

KINDS = ("person", "company", "deal")


def register(app: typer.Typer) -> None:
    app.add_typer(records_app, name="records")
    app.command("timeline")(timeline)
    app.command("send")(send)


def _cli() -> Any:
    from inboxlink import cli

    return cli


@records_app.command("add")
def records_add(
    kind: Annotated[str, typer.Argument(help="person | company | deal")],
    name: Annotated[str, typer.Option("--name", help="the record's name")],
    email: Annotated[
        list[str] | None, typer.Option("--email", help="people: an address (repeatable)")
    ] = None,
    domain: Annotated[
        list[str] | None, typer.Option("--domain", help="companies: a domain (repeatable)")
    ] = None,
    token: Annotated[str | None, typer.Option("--token", help="deals: the short token, e.g. T-1042")] = None,
    person: Annotated[str | None, typer.Option("--person", help="deals: the person's record id")] = None,
    company: Annotated[
        str | None, typer.Option("--company", help="people, deals: the company's record id")
    ] = None,
    external_id: Annotated[str | None, typer.Option("--external-id", help="the host CRM's id")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the record as JSON")] = False,
) -> None:
    """Create a record; mail already synced is linked to it at once."""
    cli = _cli()
    with cli._runtime() as rt:
        if kind not in KINDS:
            raise ValidationError(f"unknown record type {kind!r}; use one of {', '.join(KINDS)}")
        record = rt.records.create(
            kind,
            RecordInput(
                name=name,
                emails=list(email) if email else ([] if kind == "person" else None),
                domains=list(domain) if domain else ([] if kind == "company" else None),
                token=token,
                person_id=person,
                company_id=company,
                external_id=external_id,
            ),
        )
    if as_json:
        cli._print_json(record.to_dict())
    else:
        cli.out.print(f"{record.id}  {record.type}  {record.name}")


def timeline(
    kind: Annotated[str, typer.Argument(help="person | company | deal")],
    record_id: Annotated[str, typer.Argument(help="the record's id")],
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON list, newest first")] = False,
) -> None:
    """The record's mail, newest first, each with the rule and evidence that put it there."""
    from inboxlink.crm import timeline as crm_timeline

    cli = _cli()
    entries: list[dict[str, Any]] = []
    with cli._runtime() as rt, rt.db.engine.connect() as conn:
        if kind not in KINDS:
            raise ValidationError(f"unknown record type {kind!r}; use one of {', '.join(KINDS)}")
        offset = 0
        while True:
            page = crm_timeline.timeline(conn, SYSTEM, kind, record_id, limit=500, offset=offset)
            entries.extend(page["entries"])
            offset += 500
            if offset >= page["total"]:
                break
    if as_json:
        cli._print_json(entries)
        return
    for e in entries:
        cli.out.print(
            f"{e['date'] or '-':25}  {(e['subject'] or '')[:60]:60}  {e['rule']}: {e['evidence']}",
            markup=False,
        )


def _record_ref(value: str) -> tuple[str, str]:
    kind, _, rid = value.partition(":")
    if kind not in KINDS or not rid:
        raise ValidationError(f"--record takes TYPE:ID (person:…, company:…, deal:…), not {value!r}")
    return kind, rid


def send(
    account: Annotated[str, typer.Argument(help="the account to send from")],
    to: Annotated[list[str] | None, typer.Option("--to", help="recipient (repeatable)")] = None,
    cc: Annotated[list[str] | None, typer.Option("--cc", help="copy (repeatable)")] = None,
    bcc: Annotated[list[str] | None, typer.Option("--bcc", help="blind copy (repeatable)")] = None,
    subject: Annotated[str, typer.Option("--subject")] = "",
    text: Annotated[str | None, typer.Option("--text", help="plain-text body")] = None,
    html: Annotated[str | None, typer.Option("--html", help="HTML body")] = None,
    reply_to_message: Annotated[
        str | None, typer.Option("--reply-to-message", help="Message-ID of the message answered")
    ] = None,
    record: Annotated[
        list[str] | None, typer.Option("--record", help="TYPE:ID to link at once (repeatable)")
    ] = None,
    send_at: Annotated[
        str | None, typer.Option("--send-at", help="ISO 8601 time to send it (serve sends it)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Send now (and wait for the server's answer), or queue for --send-at."""
    from inboxlink.outbound.outbox import SendRequest

    cli = _cli()
    with cli._runtime() as rt:
        if text is not None and html is not None:
            raise ValidationError("give --text or --html, not both")
        when = None
        if send_at:
            try:
                when = datetime.fromisoformat(send_at)
            except ValueError as exc:
                raise ValidationError(f"--send-at: {send_at!r} is not an ISO 8601 time") from exc
            if when.tzinfo is None:
                raise ValidationError("--send-at needs a time zone (e.g. 2026-12-05T09:00:00+01:00 or ...Z)")
        request = SendRequest(
            to=list(to or []),
            cc=list(cc or []),
            bcc=list(bcc or []),
            subject=subject,
            text=text,
            html=html,
            reply_to_message=reply_to_message,
            records=[_record_ref(r) for r in record or []],
            send_at=when,
        )
        item = rt.outbox.create(SYSTEM, account, request)
        if item["status"] == "queued" and when is None:
            item = rt.outbox.send(item["id"])
    if as_json:
        cli._print_json(item)
    else:
        line = f"{item['id']}: {item['status']}  <{item['message_id']}>"
        if item["error"]:
            line += f"  ({item['error']['message']})"
        cli.out.print(line, markup=False)
    if item["status"] in ("failed", "uncertain"):
        raise typer.Exit(cli.EXIT_ERROR)
