"""The console's one stylesheet, served at /console/console.css (CSP `style-src 'self'`: no inline styles).

System fonts only and no external asset of any kind, so the console works offline and on air-gapped hosts.
"""

CSS = """\
:root {
  --bg: #f6f7f9; --panel: #ffffff; --ink: #17202a; --muted: #5b6673; --line: #dde2e8; --brand: #1b4d8c;
  --ok: #1e7b45; --ok-bg: #e3f4ea; --warn: #8a5a00; --warn-bg: #fff1d1; --bad: #a4262c; --bad-bg: #fde7e8;
  --idle: #56606b; --idle-bg: #eceff2;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--bg);
}
* { box-sizing: border-box; }
body { margin: 0; line-height: 1.45; font-size: 15px; }
a { color: var(--brand); }
code, pre { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 13px; }
code { overflow-wrap: break-word; }
code.hash { overflow-wrap: anywhere; font-size: 12px; }
time { white-space: nowrap; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #0f1720; color: #e6edf3; padding: 12px 14px;
      border-radius: 6px; margin: 8px 0 0; }
header.top { display: flex; flex-wrap: wrap; align-items: center; gap: 8px 24px; padding: 10px 24px;
             background: #10263f; color: #fff; }
header.top .brand { color: #fff; font-weight: 700; font-size: 18px; text-decoration: none; letter-spacing: .02em; }
header.top nav { display: flex; flex-wrap: wrap; gap: 4px; flex: 1 1 auto; }
header.top nav a { color: #c9d6e5; text-decoration: none; padding: 6px 10px; border-radius: 5px; }
header.top nav a.current, header.top nav a:hover { background: #1f3d60; color: #fff; }
header.top form.logout { display: flex; align-items: center; gap: 10px; margin: 0; }
header.top .who { color: #c9d6e5; font-size: 13px; }
button { font: inherit; cursor: pointer; border-radius: 5px; border: 1px solid var(--line); padding: 6px 12px;
         background: var(--panel); color: var(--ink); }
header.top button { background: transparent; color: #fff; border-color: #4b6787; }
main { max-width: 1280px; margin: 0 auto; padding: 20px 24px 40px; }
h1 { font-size: 24px; margin: 4px 0 6px; }
h2 { font-size: 17px; margin: 0 0 10px; }
section { margin-top: 26px; }
.lead { color: var(--muted); margin: 0 0 6px; }
.scope { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 0 0 14px; color: var(--muted); }
.chip { display: inline-block; padding: 3px 10px; border: 1px solid var(--line); border-radius: 999px;
        background: var(--panel); text-decoration: none; font-size: 13px; }
.chip.current { background: var(--brand); border-color: var(--brand); color: #fff; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(260px, 1fr)); gap: 14px; margin-top: 14px; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px;
        min-width: 0; }
.card h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); }
.nums { display: flex; flex-wrap: wrap; gap: 10px 18px; }
.nums div { display: flex; flex-direction: column; min-width: 56px; }
.nums b { font-size: 26px; line-height: 1.1; font-variant-numeric: tabular-nums; }
.nums span { font-size: 12px; color: var(--muted); }
.big { font-size: 20px; font-weight: 650; margin: 0; overflow-wrap: anywhere; }
.sub { color: var(--muted); font-size: 13px; margin: 8px 0 0; overflow-wrap: anywhere; }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; }
.scroll { overflow-x: auto; background: var(--panel); border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; text-transform: uppercase; letter-spacing: .04em; color: var(--muted); background: #fafbfc; }
tr:last-child td { border-bottom: 0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.id { white-space: nowrap; }
td.wide { min-width: 300px; }
.empty { color: var(--muted); font-style: italic; margin: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; font-weight: 600;
         white-space: nowrap; }
.badge.ok, .badge.allow, .badge.verified, .badge.completed, .badge.approved, .badge.review_approved {
  background: var(--ok-bg); color: var(--ok); }
.badge.review, .badge.held, .badge.pending, .badge.degraded, .badge.unready {
  background: var(--warn-bg); color: var(--warn); }
.badge.block, .badge.deny, .badge.denied, .badge.failed, .badge.failing, .badge.hidden, .badge.down {
  background: var(--bad-bg); color: var(--bad); }
.badge.idle, .badge.unchecked, .badge.other { background: var(--idle-bg); color: var(--idle); }
ol.flow { list-style: none; display: grid; grid-template-columns: repeat(auto-fit, minmax(160px, 1fr)); gap: 10px;
          padding: 0; margin: 0 0 14px; counter-reset: step; }
ol.flow li { background: var(--panel); border: 1px solid var(--line); border-left: 4px solid var(--brand);
             border-radius: 6px; padding: 10px 12px; min-width: 0; }
ol.flow li span { display: block; font-size: 12px; text-transform: uppercase; letter-spacing: .05em;
                  color: var(--muted); }
ol.flow li strong { display: block; overflow-wrap: anywhere; }
ol.flow li small { display: block; color: var(--muted); overflow-wrap: anywhere; }
.login { max-width: 440px; margin: 60px auto; }
.login form { display: flex; flex-direction: column; gap: 10px; }
.login input { font: inherit; padding: 8px 10px; border: 1px solid var(--line); border-radius: 5px; width: 100%; }
.login button { background: var(--brand); color: #fff; border-color: var(--brand); }
.notice { border-radius: 6px; padding: 10px 12px; margin: 0 0 12px; }
.notice.bad { background: var(--bad-bg); color: var(--bad); }
.notice.warn { background: var(--warn-bg); color: var(--warn); }
.notice.ok { background: var(--ok-bg); color: var(--ok); }
.snippets { display: grid; grid-template-columns: repeat(auto-fit, minmax(380px, 1fr)); gap: 14px; }
.snippets article { min-width: 0; }
.muted { color: var(--muted); }
footer { max-width: 1280px; margin: 0 auto; padding: 0 24px 30px; color: var(--muted); font-size: 12px; }
@media (max-width: 560px) { main, header.top { padding-left: 12px; padding-right: 12px; }
  .snippets { grid-template-columns: 1fr; } }
"""
