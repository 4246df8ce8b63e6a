"""`/docs`: the server's routes as one plain HTML page made from its OpenAPI schema (FastAPI's own pages load their
scripts from a CDN and stay blank offline). The schema itself is at `/openapi.json`."""

from __future__ import annotations

from html import escape
from typing import Any


def api_page(schema: dict[str, Any]) -> str:
    rows = []
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            text = operation.get("description") or operation.get("summary") or ""
            rows.append(f"<tr><td><code>{escape(method.upper())}</code></td><td><code>{escape(path)}</code></td>"
                        f"<td>{escape(text)}</td></tr>")
    info = schema.get("info", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(info.get("title", "API"))}: routes</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<style>body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:960px;color:#1d2330}}
table{{border-collapse:collapse;width:100%}}td{{border-top:1px solid #dde1e8;padding:.35rem .5rem;vertical-align:top}}
</style></head><body>
<h1>{escape(info.get("title", "API"))}</h1>
<p>{escape(info.get("description", ""))} The machine-readable schema is at <a href="/openapi.json">/openapi.json</a>;
docs/serving.md describes each route, its errors and its limits.</p>
<table><tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
