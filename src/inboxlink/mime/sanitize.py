"""Make a message's HTML safe to show inside the CRM (nh3, i.e. the Rust `ammonia` sanitiser).

Policy, for mail rather than for web comments:

- layout survives: tables, fonts, alignment, colours, and a safe subset of inline CSS properties
  (no positioning, no `background-image`/`url()` carriers, no `display`);
- gone with their content: `script`, `style`, `title`, `textarea`, `select`...; gone but their
  text kept: every other tag not listed (`form`, `iframe`, `object`, `svg`, `meta` ...);
- no event handlers, no `class`/`id` (they could hook into the CRM's own CSS), no comments;
- links: only http(s), mailto and tel; relative URLs are dropped (a message has no base), every
  link gets `rel="noopener noreferrer"` and `target="_blank"`;
- images: only http(s), `cid:` (resolved later against the message's attachments) and
  `data:image/(png|gif|jpeg|webp|bmp)`; `data:` and `cid:` are refused anywhere else.
"""

from __future__ import annotations

import nh3

_TAGS = frozenset(
    {
        "a", "abbr", "acronym", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption",
        "center", "cite", "code", "col", "colgroup", "dd", "del", "dfn", "div", "dl", "dt", "em",
        "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins",
        "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike",
        "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "u",
        "ul", "var", "wbr",
    }
)  # fmt: skip
_CLEAN_CONTENT = frozenset(
    {"script", "style", "title", "textarea", "select", "option", "noscript", "template", "xmp"}
)
_GENERIC_ATTRS = frozenset(
    {"align", "valign", "dir", "lang", "title", "width", "height", "style", "bgcolor", "border"}
)
_ATTRIBUTES: dict[str, set[str]] = {
    "*": set(_GENERIC_ATTRS),
    "a": {"href", "name", "hreflang"},
    "img": {"src", "alt", "hspace", "vspace"},
    "font": {"color", "face", "size"},
    "table": {"cellpadding", "cellspacing", "summary", "frame", "rules"},
    "td": {"colspan", "rowspan", "nowrap", "headers", "scope"},
    "th": {"colspan", "rowspan", "nowrap", "headers", "scope"},
    "col": {"span"},
    "colgroup": {"span"},
    "ol": {"start", "type", "reversed"},
    "ul": {"type"},
    "li": {"value", "type"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"cite", "datetime"},
    "ins": {"cite", "datetime"},
    "hr": {"size", "noshade"},
}
_STYLE_PROPERTIES = frozenset(
    {
        "color", "background-color", "font", "font-family", "font-size", "font-style",
        "font-variant", "font-weight", "letter-spacing", "line-height", "text-align",
        "text-decoration", "text-indent", "text-transform", "vertical-align", "white-space",
        "word-break", "word-spacing", "direction", "width", "min-width", "max-width", "height",
        "min-height", "max-height", "margin", "margin-top", "margin-right", "margin-bottom",
        "margin-left", "padding", "padding-top", "padding-right", "padding-bottom", "padding-left",
        "border", "border-top", "border-right", "border-bottom", "border-left", "border-color",
        "border-style", "border-width", "border-collapse", "border-spacing", "border-radius",
        "list-style-type", "table-layout",
    }
)  # fmt: skip
_URL_SCHEMES = frozenset({"http", "https", "mailto", "tel", "cid", "data"})
_IMAGE_DATA = ("data:image/png", "data:image/gif", "data:image/jpeg", "data:image/jpg",
               "data:image/webp", "data:image/bmp")  # fmt: skip
_IMAGE_SCHEMES = ("http:", "https:", "cid:", *_IMAGE_DATA)
_LINK_SCHEMES = ("http:", "https:", "mailto:", "tel:")
_URL_ATTRS = frozenset({"href", "src", "cite"})


def _filter_attribute(tag: str, attr: str, value: str) -> str | None:
    """Per-attribute check on top of the scheme allow-list: where `data:`/`cid:` may appear."""
    if attr not in _URL_ATTRS:
        return value
    url = value.strip().lower()
    if tag == "img" and attr == "src":
        return value if url.startswith(_IMAGE_SCHEMES) else None
    if attr == "href":
        return value if url.startswith(_LINK_SCHEMES) else None
    return value if url.startswith(("http:", "https:")) else None  # cite


_CLEANER = nh3.Cleaner(
    tags=_TAGS,
    clean_content_tags=_CLEAN_CONTENT,
    attributes=_ATTRIBUTES,
    attribute_filter=_filter_attribute,
    strip_comments=True,
    link_rel="noopener noreferrer",
    url_schemes=_URL_SCHEMES,
    filter_style_properties=_STYLE_PROPERTIES,
    url_relative="deny",
    set_tag_attribute_values={"a": {"target": "_blank"}},
)


def sanitize_html(html: str) -> str:
    """Sanitised copy of a message's HTML body, safe to embed in a page."""
    return _CLEANER.clean(html)
