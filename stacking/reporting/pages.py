"""The pieces of stackserve's HTML pages (the bundle's report, a study's page): one style, escaped text, tables and
figures. Pages have no script and fetch nothing, so they read offline and print."""

from __future__ import annotations

import html

STYLE = """
body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .7em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}tr.chosen td{font-weight:bold;background:#eef6ee}
img{max-width:100%}figure{margin:1em 0}figcaption{font-size:.9em;color:#555}.missing{color:#8a5a00;font-style:italic}
nav ol{columns:2}.warning{background:#fff3e0;border-left:4px solid #c60;padding:.4em .8em}
@media print{body{max-width:none;margin:0;font-size:10pt}nav{display:none}a{color:inherit;text-decoration:none}
figure,table,tr{break-inside:avoid}h2,h3{break-after:avoid}img{max-height:24cm}}
"""


def esc(value: object) -> str:
    return html.escape(str(value))


def table(header: list[str], rows: list[list[str]], marked: set[int] = frozenset()) -> str:
    """An HTML table; rows whose index is in ``marked`` get the ``chosen`` class."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=chosen' if i in marked else ''}>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(file: str, alt: str, caption: str = "") -> str:
    text = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure><img src='{esc(file)}' alt='{esc(alt)}'>{text}</figure>"


def missing(text: str) -> str:
    return f"<p class=missing>{esc(text)}</p>"
