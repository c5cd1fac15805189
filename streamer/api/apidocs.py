"""``GET /docs``: the API description as a self-contained page.

FastAPI's own Swagger UI loads its scripts from a CDN; avatarcast serves nothing from outside,
so this page renders ``/openapi.json`` with a few lines of plain JS instead.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>avatarcast API</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}
h1{font-size:1.5rem}.op{border:1px solid #ddd;border-radius:6px;margin:.6rem 0;padding:.5rem .8rem}
.m{display:inline-block;min-width:4.5rem;font-weight:700;font-family:monospace}
.path{font-family:monospace}.sum{color:#555;margin-left:.5rem}
details pre{background:#f6f6f6;padding:.5rem;overflow:auto;font-size:12px}
</style></head><body>
<h1>avatarcast HTTP API</h1>
<p>The machine-readable description is <a href="/openapi.json">/openapi.json</a>.</p>
<div id="ops">loading…</div>
<script>
fetch("/openapi.json").then(r => r.json()).then(spec => {
  const box = document.getElementById("ops");
  box.textContent = "";
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const el = document.createElement("details");
      el.className = "op";
      const head = document.createElement("summary");
      const m = Object.assign(document.createElement("span"), {className: "m"});
      m.textContent = method.toUpperCase();
      const p = Object.assign(document.createElement("span"), {className: "path"});
      p.textContent = path;
      const s = Object.assign(document.createElement("span"), {className: "sum"});
      s.textContent = op.summary || "";
      head.append(m, p, s);
      const body = document.createElement("pre");
      body.textContent = JSON.stringify(
        {description: op.description, parameters: op.parameters,
         requestBody: op.requestBody, responses: op.responses}, null, 2);
      el.append(head, body);
      box.append(el);
    }
  }
}).catch(err => { document.getElementById("ops").textContent = "could not load: " + err; });
</script></body></html>
"""


@router.get("/docs")
async def api_docs() -> HTMLResponse:
    return HTMLResponse(_PAGE)
