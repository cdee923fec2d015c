"""The atlas's static site: plain HTML with its CSS and script inline, relative links only.

Layout under the output folder::

    index.html                 every layer with a thumbnail strip
    LAYER/index.html           one layer, all its filters
    LAYER/fNNN.html            one filter: large image, index, final activation, settings
    LAYER/fNNN.png             the rendered image (written by jaxviz.atlas)

Nothing is fetched by script and nothing comes from outside, so the pages work from
``file://`` as well as from any static web server. On a filter page the left/right
arrow keys go to the previous/next filter (across layers), up or Escape to the
layer; on a layer page left/right go to the previous/next layer, up to the index.
"""
from __future__ import annotations

import html
import os
from urllib.parse import quote
from typing import Mapping, NamedTuple, Sequence

from jaxviz.errors import JaxvizError
from jaxviz.image import atomic_write, make_folder

STRIP = 16  # thumbnails per layer on the index

CSS = """
:root { color-scheme: dark; }
body { margin: 0; padding: 1rem 1.5rem 3rem; background: #15171a; color: #e6e6e6;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; }
a { color: #8cc4ff; text-decoration: none; }
a:hover, a:focus { text-decoration: underline; }
h1 { font-size: 1.4rem; margin: .2rem 0 .6rem; }
h2 { font-size: 1.1rem; margin: 1.4rem 0 .3rem; }
nav { display: flex; gap: 1rem; flex-wrap: wrap; align-items: baseline; margin-bottom: .6rem; color: #9aa0a6; }
nav .spacer { flex: 1; }
.settings { color: #9aa0a6; font-size: .9rem; }
img.px { image-rendering: pixelated; image-rendering: crisp-edges; background: #000; display: block; }
.strip { display: flex; gap: 3px; flex-wrap: wrap; }
.strip img { width: 48px; height: 48px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(92px, 1fr)); gap: 8px; }
.grid figure { margin: 0; }
.grid img { width: 100%; aspect-ratio: 1; }
.grid figcaption { font-size: .75rem; color: #9aa0a6; display: flex; justify-content: space-between; }
.filter { display: flex; gap: 2rem; flex-wrap: wrap; align-items: flex-start; }
.filter img { width: min(512px, 90vw); height: auto; aspect-ratio: 1; }
dl { display: grid; grid-template-columns: auto auto; gap: .2rem 1rem; margin: 0; }
dt { color: #9aa0a6; } dd { margin: 0; font-variant-numeric: tabular-nums; }
kbd { border: 1px solid #555; border-radius: 3px; padding: 0 .3em; font-size: .85em; }
.hint { color: #9aa0a6; font-size: .85rem; margin-top: 1rem; }
"""

KEYS = """
<script>
document.addEventListener("keydown", function (e) {
  if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
  var id = {ArrowLeft: "prev", ArrowRight: "next", ArrowUp: "up", Escape: "up"}[e.key];
  var a = id && document.getElementById(id);
  if (a && a.href) { e.preventDefault(); window.location.href = a.href; }
});
</script>
"""


class FilterEntry(NamedTuple):
    """One rendered filter: its index, final activation and image file (relative to the layer folder)."""

    filter: int
    activation: float
    image: str


def filter_page_name(f: int) -> str:
    return f"f{f:03d}.html"


def image_name(f: int) -> str:
    return f"f{f:03d}.png"


def _esc(x) -> str:
    """Text for HTML; a file name's bytes that are no UTF-8 (Python's surrogates) as \\udcNN."""
    return html.escape(str(x).encode("utf-8", "backslashreplace").decode(), quote=True)


def url(path: str) -> str:
    """A relative path as an attribute's URL: percent-encoded (a layer or file name with a
    space, '#', '?' or '%' would otherwise link elsewhere; a name's bytes that are no UTF-8
    as themselves), its '/' kept, HTML-escaped."""
    return _esc(quote(path, safe="/", errors="surrogateescape"))


def _up(layer: str) -> str:
    """From a layer's folder back to the atlas root: one '../' per level ("block1/conv2": two)."""
    return "../" * (layer.count("/") + 1)


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n{KEYS}</body>\n</html>\n"
    )


def _write(path: str, text: str) -> None:
    make_folder(os.path.dirname(path))
    if os.path.isdir(path):  # python -m jaxviz.atlas refuses it before any work; a folder made since
        raise JaxvizError(f"cannot write {path}: a folder is in the way; move it, or choose another --out")
    data = text.encode("utf-8")
    if os.path.isfile(path):  # a pipe there: atomic_write refuses it (reading it waited forever)
        with open(path, "rb") as f:
            if f.read() == data:
                return
    atomic_write(path, lambda fh: fh.write(data))


def _settings_text(settings: Mapping) -> str:
    keys = ("recipe", "dead_filter", "size", "steps", "step_size", "seed", "precision")
    return ", ".join(f"{k.replace('_', ' ')} {settings[k]}" for k in keys if settings.get(k) is not None)


# The seed's filters at 0 on their final image (a relu's output, so no gradient) were 0 at every
# step in its grids (6 of block1_conv1's first 64; python -m jaxviz.grid names them): their images
# are the start images. Not said of the quality recipe, whose steps see transformed images.
NEVER_FIRED = " (the unit never fired: no gradient reached the image, which is its start image)"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _filters(entries, seed: bool) -> str:
    """"N filters", and how many of them never fired (the seed's: their images are the start images)."""
    dead = sum(e.activation == 0 for e in entries) if seed else 0
    return _count(len(entries), "filter") + (f", {dead} never fired" if dead else "")


def _activation(a: float) -> str:
    return f"{a:.6g}"


def _animation(settings: Mapping, e: FilterEntry, layer: str) -> str:
    """The ascent's animation beside the image, when the atlas was made with --animate."""
    if not settings.get("animate") or not e.image.endswith(".png"):
        return ""
    gif = e.image[: -len(".png")] + ".gif"
    return (f"<figure class=\"ascent\"><img class=\"px\" id=\"animation\" src=\"{url(gif)}\" "
            f"alt=\"{_esc(layer)} filter {e.filter}, the ascent\"><figcaption>the ascent</figcaption></figure>")


def build_site(out: str, layers: Sequence[tuple[str, Sequence[FilterEntry]]], settings: Mapping,
               title: str = "jaxviz atlas: VGG16", examples=None) -> str:
    """Write index.html, one page per layer and one per filter; returns the index's path.

    ``layers`` is in display order, each with its filters in order; ``settings`` are
    shown on every page (the atlas manifest's settings). ``examples`` (a
    ``jaxviz.site_examples.SiteExamples``) adds dataset examples to filter and layer pages.
    """
    layers = [(name, list(entries)) for name, entries in layers if entries]
    summary = _esc(_settings_text(settings))
    seed = settings.get("recipe", "seed") == "seed"
    ex_css, ex_strip, ex_section = "", (lambda l, f: ""), (lambda l, f, d: "")
    from jaxviz.site_examples import CSS as EX_CSS, remove_stale

    patches = []
    if examples is not None:
        patches = examples.write(out, {name: [e.filter for e in entries] for name, entries in layers})
        ex_css, ex_strip, ex_section = f"<style>{EX_CSS}</style>", examples.strip_html, examples.filter_html
    remove_stale(out, [name for name, _ in layers], patches)  # a previous build's, with other --examples

    # index
    parts = [f"<h1>{_esc(title)}</h1>",
             f"<p class=\"settings\">{_count(len(layers), 'layer')}, {_filters([e for _, l in layers for e in l], seed)}; "
             f"{summary}</p>"]
    for name, entries in layers:
        thumbs = "".join(
            f"<a href=\"{url(name)}/{filter_page_name(e.filter)}\" title=\"{_esc(name)} filter {e.filter}\">"
            f"<img class=\"px\" src=\"{url(name)}/{url(e.image)}\" alt=\"{_esc(name)} filter {e.filter}\" "
            f"width=\"48\" height=\"48\"></a>"
            for e in entries[:STRIP]
        )
        more = f" <a href=\"{url(name)}/index.html\">all {len(entries)} &rarr;</a>" if len(entries) > STRIP else ""
        parts.append(
            f"<section class=\"layer\" id=\"{_esc(name)}\"><h2><a class=\"layer-link\" href=\"{url(name)}/index.html\">"
            f"{_esc(name)}</a> <span class=\"settings\">{_filters(entries, seed)}</span></h2>"
            f"<div class=\"strip\">{thumbs}{more}</div></section>"
        )
    parts.append("<p class=\"hint\">On a filter page: <kbd>&larr;</kbd> <kbd>&rarr;</kbd> previous/next filter, "
                 "<kbd>&uarr;</kbd> or <kbd>Esc</kbd> back to the layer.</p>")
    index = os.path.join(out, "index.html")
    _write(index, _page(title, "\n".join(parts)))

    # the order of all filters, for previous/next across layers
    order = [(name, e) for name, entries in layers for e in entries]
    where = {(name, e.filter): i for i, (name, e) in enumerate(order)}
    info_rows = [("recipe", settings.get("recipe")), ("dead filter", settings.get("dead_filter")),
                 ("size", f"{settings.get('size')} px"),
                 ("steps", settings.get("steps")), ("step size", settings.get("step_size")),
                 ("seed", settings.get("seed")), ("precision", settings.get("precision")),
                 ("batch per device", settings.get("batch")), ("weights", settings.get("weights_name")),
                 ("weights sha256", str(settings.get("weights_sha256", ""))[:16])]

    for li, (name, entries) in enumerate(layers):
        folder = os.path.join(out, name)
        prev_l = layers[li - 1][0] if li > 0 else None
        next_l = layers[li + 1][0] if li + 1 < len(layers) else None
        up = _up(name)
        nav = ["<nav>", f"<a id=\"up\" href=\"{up}index.html\">&uarr; atlas</a>",
               f"<strong>{_esc(name)}</strong>", "<span class=\"spacer\"></span>"]
        nav.append(f"<a id=\"prev\" rel=\"prev\" href=\"{up}{url(prev_l)}/index.html\">&larr; {_esc(prev_l)}</a>"
                   if prev_l else "<span>&larr;</span>")
        nav.append(f"<a id=\"next\" rel=\"next\" href=\"{up}{url(next_l)}/index.html\">{_esc(next_l)} &rarr;</a>"
                   if next_l else "<span>&rarr;</span>")
        nav.append("</nav>")
        cells = "".join(
            f"<figure><a href=\"{filter_page_name(e.filter)}\"><img class=\"px\" src=\"{url(e.image)}\" "
            f"alt=\"{_esc(name)} filter {e.filter}\" title=\"filter {e.filter}, activation {_activation(e.activation)}\">"
            f"</a><figcaption><span>{e.filter}</span><span>{_activation(e.activation)}</span></figcaption>"
            f"{ex_strip(name, e.filter)}</figure>"
            for e in entries
        )
        body = ex_css + "\n".join(nav) + (
            f"\n<h1>{_esc(name)}</h1><p class=\"settings\">{_filters(entries, seed)}; {summary}. "
            "Captions: filter index and final activation.</p>\n"
            f"<div class=\"grid\">{cells}</div>"
        )
        _write(os.path.join(folder, "index.html"), _page(f"{name} - {title}", body))

        for e in entries:
            i = where[(name, e.filter)]
            links = []
            if i > 0:
                pl, pe = order[i - 1]
                href = filter_page_name(pe.filter) if pl == name else f"{up}{url(pl)}/{filter_page_name(pe.filter)}"
                links.append(f"<a id=\"prev\" rel=\"prev\" href=\"{href}\">&larr; {_esc(pl)} {pe.filter}</a>")
            else:
                links.append("<span>&larr;</span>")
            if i + 1 < len(order):
                nl, ne = order[i + 1]
                href = filter_page_name(ne.filter) if nl == name else f"{up}{url(nl)}/{filter_page_name(ne.filter)}"
                links.append(f"<a id=\"next\" rel=\"next\" href=\"{href}\">{_esc(nl)} {ne.filter} &rarr;</a>")
            else:
                links.append("<span>&rarr;</span>")
            final = _activation(e.activation) + (NEVER_FIRED if e.activation == 0 and seed else "")
            rows = [("layer", name), ("filter", e.filter), ("final activation", final)]
            rows += [r for r in info_rows if r[1] not in (None, "")]
            dl = "".join(f"<dt>{_esc(k)}</dt><dd class=\"{_esc(k.replace(' ', '-'))}\">{_esc(v)}</dd>" for k, v in rows)
            body = (
                f"<nav><a href=\"{up}index.html\">atlas</a>"
                f"<a id=\"up\" href=\"index.html\">&uarr; {_esc(name)}</a>"
                f"<strong>filter {e.filter}</strong><span class=\"spacer\"></span>{''.join(links)}</nav>\n"
                f"<h1>{_esc(name)} filter <span id=\"filter-index\">{e.filter}</span></h1>\n"
                f"<div class=\"filter\"><img class=\"px\" id=\"image\" src=\"{url(e.image)}\" "
                f"alt=\"{_esc(name)} filter {e.filter}\">{_animation(settings, e, name)}<dl>{dl}</dl></div>\n"
                f"{ex_section(name, e.filter, folder)}{ex_css}"
                "<p class=\"hint\"><kbd>&larr;</kbd> <kbd>&rarr;</kbd> previous/next filter, "
                "<kbd>&uarr;</kbd> or <kbd>Esc</kbd> back to the layer.</p>"
            )
            _write(os.path.join(folder, filter_page_name(e.filter)), _page(f"{name} filter {e.filter} - {title}", body))
    return index
