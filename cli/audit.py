"""``sluice audit verify``: check the admin_audit_log hash chains."""

from __future__ import annotations

import typer

from cli.common import out, settings
from cli.olap import read

app = typer.Typer(help="The compliance audit log.", no_args_is_help=True)


@app.command("verify")
def verify(
    tenant: str | None = typer.Option(None, "--tenant", help="Verify only this tenant."),
) -> None:
    """Verify the admin_audit_log hash chains; report the first broken link per tenant.

    Exits 1 if any row was altered, removed or inserted. Prints each tenant's head
    (last seq and row_hash): keep it elsewhere to detect a truncated or rewritten tail.
    """
    from sluice.olap.audit import CONFLICTS_SQL, VERIFY_SQL, where_tenant
    from sluice.olap.audit import verify as verify_chains

    s = settings()
    where = where_tenant(tenant)
    columns, rows = read(s, VERIFY_SQL.format(where=where))
    _, conflicts = read(s, CONFLICTS_SQL.format(where=where))
    reports = verify_chains(
        (dict(zip(columns, r, strict=True)) for r in rows),
        [(r[0], int(r[1])) for r in conflicts],
    )
    if not reports:
        out.print(f"no audit rows{f' for tenant {tenant}' if tenant else ''}", highlight=False)
        return
    for report in reports:
        if report.first_break is None:
            out.print(
                f"ok      {report.tenant}: {report.rows} rows, head seq {report.head_seq} "
                f"{report.head_hash}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        else:
            b = report.first_break
            out.print(
                f"BROKEN  {report.tenant}: first broken link at seq {b.seq} ({b.kind}): {b.detail}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
    if any(not r.ok for r in reports):
        raise typer.Exit(1)
