"""Feature cache + config -> a static site, written to a temporary folder next to
the output and moved into place only when complete.

Layout: ``index.html``, ``assets/index-data.js``, ``features/<dict index>/<id>.html`` (a
feature's page, an attention head's: ``head_page.py``, or an imported NeuronRecord's:
``record_page.py``), ``prompts/<slug>.html`` (a prompt's
page: ``prompt_page.py``),
``about.html``, ``<page>.html`` for each ``pages/*.md``, ``404.html``, ``.nojekyll``, and
``export/<format>/`` for each format ``site.export`` lists (``sitegen.export``).
Every page inlines the CSS (and its script), so a page works alone from file://.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from sitegen.cache.feature_data import DictionarySummary, FeatureData
from sitegen.cache.files import (
    batch_files,
    dictionary_summaries,
    read_batch,
    read_head_batch,
    read_prompts,
    read_record_batch,
    read_token_table,
)
from sitegen.cache.head_data import HEADS_KIND, HeadData
from sitegen.cache.manifest import read_manifest
from sitegen.cache.prompt_data import PromptData
from sitegen.cache.record_data import RECORDS_KIND, RecordData
from sitegen.config import Config
from sitegen.errors import SitegenError
from sitegen.export import FORMATS, ExportInput, site_formats, write_format
from sitegen.folders import replace_folder
from sitegen.render.assets import bundled_dir, static_markup
from sitegen.render.embed import number_text, percent_text, script_json_markup
from sitegen.render.explanations import (
    Explanation,
    Explanations,
    best_explanation,
    explanation_views,
    load_explanations,
    site_dictionaries,
)
from sitegen.render.feature_page import feature_page_context, feature_page_json
from sitegen.render.head_page import LayerLinks, head_page_context, head_page_json
from sitegen.render.index_data import INDEX_DATA_PATH, IndexRow, Row, head_row, index_row, index_script, record_row
from sitegen.render.markup import Page, load_notes, load_pages, markdown_html, plain_snippet
from sitegen.render.pages_pool import PagePool, render_batches
from sitegen.render.prompt_page import (
    PromptListing,
    PromptSite,
    check_prompts,
    prompt_appearances,
    prompt_listing,
    prompt_page_context,
    prompt_page_json,
)
from sitegen.render.provenance import DictionaryListing, provenance_sections
from sitegen.render.record_page import record_page_context, record_page_json

TEMPLATES = bundled_dir("templates")
GENERATOR_META = '<meta name="generator" content="sitegen">'


def signed_text(x: float | int) -> str:
    return ("+" if x > 0 else "") + number_text(x)


def sign_class(x: float) -> str:
    return "pos" if x > 0 else "neg" if x < 0 else ""


def template_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=number_text, signed=signed_text, pct=percent_text, sign_class=sign_class)
    return env


@dataclass
class BuiltFeatures:
    """One dictionary's built feature ids, sorted, and each one's position among them."""

    ids: list[int]
    set: set[int]
    position: dict[int, int]

    @classmethod
    def of(cls, summary: DictionarySummary) -> BuiltFeatures:
        ids = sorted(set(summary.feature_ids))
        return cls(ids, set(ids), {f: n for n, f in enumerate(ids)})


class SiteWriter:
    """Writes every file of one site under ``root``. The feature pages are written batch file
    by batch file (``write_batch``), here or in worker processes (``pages_pool``), each of which
    makes its own SiteWriter from the same arguments (``worker_factory``)."""

    def __init__(
        self,
        root: Path,
        cache: Path,
        cfg: Config,
        manifest: dict,
        notes: dict[str, dict[int, str]],
        pages: list[Page],
        explanations: Explanations | None = None,
    ):
        self.args = (root, cache, cfg, manifest, notes, pages, explanations)
        self.explanations = explanations or {}  # site.explanations, best first (render/explanations.py)
        self.prompt_notes = {i: pc.note for i, pc in enumerate(cfg.prompts) if pc.note}
        self.root, self.cache, self.manifest, self.notes = root, cache, manifest, notes
        self.pages = [p for p in pages if p.name != "about"]
        self.about = next((p for p in pages if p.name == "about"), None)
        self.summaries = dictionary_summaries(manifest)
        self.texts = read_token_table(cache)
        self.env = template_env()
        self.env.globals.update(
            site_title=cfg.site.title, nav_pages=self.pages, css=static_markup("site.css"), heads_kind=HEADS_KIND
        )
        self.built: dict[int, BuiltFeatures] = {}  # by dictionary index, made on first use
        self.links = LayerLinks(self.summaries)
        # every worker reads the prompts too: node pages link back to the prompts they rank high in
        self.prompts = read_prompts(cache)
        self.prompt_site = PromptSite(self.summaries, notes)
        check_prompts(self.prompts, self.prompt_site)
        self.appearances = prompt_appearances(self.prompts, self.prompt_site)
        # site.export: each format's files at export/<format>/, linked from the pages
        self.cfg, self.exports = cfg, {name: FORMATS[name] for name in site_formats(cfg)}

    def worker_factory(self) -> partial[SiteWriter]:
        """A picklable callable that makes this SiteWriter again (in a worker process)."""
        return partial(SiteWriter, *self.args)

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))

    def render(self, relative: str, template: str, **context) -> None:
        root = "../" * relative.count("/")
        self.write(relative, self.env.get_template(template).render(root=root, **context))

    def write_all(self, workers: int | None = None, pool: PagePool | None = None) -> None:
        """Every file of the site. ``workers``: processes for the feature pages (None: one per
        core, or none for a small site; 1: render here); ``pool``: render them there instead."""
        self.write(".nojekyll", "")
        files = [batch_files(self.cache, i) for i in range(len(self.summaries))]
        tasks = [(i, path) for i, paths in enumerate(files) for path in paths]
        n_pages = sum(len(set(s.feature_ids)) for s in self.summaries)
        rows: list[Row] = []
        listings = []
        # batch results come back in task order, so rows and errors follow the sequential order
        with closing(render_batches(tasks, self, self.worker_factory(), n_pages, workers, pool)) as results:
            for index, summary in enumerate(self.summaries):
                dict_rows = [row for _ in files[index] for row in next(results)]
                listings.append(self.listing(summary, dict_rows))
                rows += dict_rows
        prompts = [self.write_prompt(pd) for pd in self.prompts]
        self.write_index(rows, listings, prompts)
        self.write_pages(listings)
        self.write_exports()

    def write_index(self, rows: Sequence[Row], listings: list[DictionaryListing], prompts: list[PromptListing]) -> None:
        self.write(INDEX_DATA_PATH, index_script(rows, [d.name for d in listings]))
        self.render(
            "index.html",
            "index.html",
            dictionaries=listings,
            has_heads=any(d.kind == HEADS_KIND for d in listings),
            prompts=prompts,
            index_data_path=INDEX_DATA_PATH,
            page_css=static_markup("index.css"),
            js=static_markup("dom.js") + static_markup("index.js"),
        )

    def write_pages(self, listings: list[DictionaryListing]) -> None:
        """The about page, the Markdown pages and 404.html."""
        page_css = static_markup("page.css")
        self.render(
            "about.html",
            "about.html",
            body=self.about.html if self.about else None,
            provenance=provenance_sections(self.manifest, listings),
            page_css=page_css,
        )
        for page in self.pages:
            self.render(f"{page.name}.html", "page.html", page_title=page.title, body=page.html, page_css=page_css)
        self.render("404.html", "404.html", page_css=page_css, js=static_markup("notfound.js"))

    def write_exports(self) -> None:
        """Each format ``site.export`` lists, at ``export/<format>/``."""
        inp = ExportInput(self.cache, self.manifest, self.summaries, self.texts, self.cfg)
        for name in self.exports:
            write_format(name, inp, self.root / "export" / name)

    def export_links(self, index: int, summary: DictionarySummary, feature: int) -> list[tuple[str, str]]:
        """(format, path under export/<format>/) of each exported file holding this feature."""
        paths = [(name, fmt.feature_path(summary, index, feature)) for name, fmt in self.exports.items()]
        return [(name, path) for name, path in paths if path is not None]

    def nav(self, index: int, summary: DictionarySummary, feature: int) -> tuple[int | None, int | None]:
        """The previous and next built ids around a cached ``feature`` of dictionary ``index``."""
        if index not in self.built:
            self.built[index] = BuiltFeatures.of(summary)
        built = self.built[index]
        if feature not in built.position:
            unit = "head" if summary.kind == HEADS_KIND else "feature"
            raise SitegenError(
                f"{self.cache}: {unit} {feature} of '{summary.name}' is cached but not listed in the manifest; "
                "rebuild the cache"
            )
        n = built.position[feature]
        return (built.ids[n - 1] if n > 0 else None, built.ids[n + 1] if n + 1 < len(built.ids) else None)

    def write_batch(self, index: int, path: Path) -> list[Row]:
        """The pages of one batch file of dictionary ``index``; returns their index rows."""
        summary = self.summaries[index]
        notes = self.notes.get(summary.name, {})
        explained = self.explanations.get(summary.name, {})
        rows: list[Row] = []
        if summary.kind == RECORDS_KIND:
            for rd in read_record_batch(path):
                nav = self.nav(index, summary, rd.feature)
                note = notes.get(rd.feature)
                listed = explained.get(rd.feature, [])
                self.write_record(index, summary, rd, nav, note, listed)
                rows.append(record_row(rd, index, plain_snippet(note) if note else "", *best_explanation(listed)))
            return rows
        if summary.kind == HEADS_KIND:
            for hd in read_head_batch(path):
                nav = self.nav(index, summary, hd.feature)
                self.write_head(index, summary, hd, nav, notes.get(hd.feature), explained.get(hd.feature, []))
                rows.append(head_row(hd, index))
            return rows
        for fd in read_batch(path):
            nav = self.nav(index, summary, fd.feature)
            note = notes.get(fd.feature)
            listed = explained.get(fd.feature, [])
            self.write_feature(index, summary, fd, nav, note, self.built[index].set, listed)
            snippet = plain_snippet(note) if note else ""
            rows.append(index_row(fd, index, self.texts, snippet, *best_explanation(listed)))
        return rows

    def listing(self, summary: DictionarySummary, rows: list[Row]) -> DictionaryListing:
        """The index's entry for a dictionary whose pages gave ``rows`` (attention heads have no "dead")."""
        n_built = len(set(summary.feature_ids))
        if len(rows) != n_built:
            unit = "heads" if summary.kind == HEADS_KIND else "features"
            raise SitegenError(
                f"{self.cache}: '{summary.name}' lists {n_built} {unit} but {len(rows)} are cached; rebuild the cache"
            )
        n_dead = sum(r.dead for r in rows if isinstance(r, IndexRow))
        return DictionaryListing(summary.name, summary.kind, summary.hook_name, summary.d_sae, len(rows), n_dead)

    def write_feature(
        self,
        index: int,
        summary: DictionarySummary,
        fd: FeatureData,
        nav: tuple[int | None, int | None],
        note: str | None,
        built: set[int],
        explanations: Sequence[Explanation] = (),
    ) -> None:
        data = feature_page_json(fd, index, nav, self.texts)
        context = feature_page_context(fd, summary, built, self.texts, markdown_html(note) if note else None)
        self.render(
            f"features/{index}/{fd.feature}.html",
            "feature.html",
            **context,
            unit="neuron" if summary.kind == "neurons" else "feature",
            explanations=explanation_views(explanations),
            appearances=self.appearances.get((index, fd.feature), []),
            export_links=self.export_links(index, summary, fd.feature),
            layer_heads=self.links.head_groups(summary.layer(), index),
            prev_id=nav[0],
            next_id=nav[1],
            data_json=script_json_markup(data),
            page_css=static_markup("feature.css"),
            js=static_markup("dom.js") + static_markup("feature.js"),
        )

    def write_head(
        self,
        index: int,
        summary: DictionarySummary,
        hd: HeadData,
        nav: tuple[int | None, int | None],
        note: str | None,
        explanations: Sequence[Explanation] = (),
    ) -> None:
        data = head_page_json(hd, index, nav, self.texts)
        context = head_page_context(hd, summary, index, self.links, self.texts, markdown_html(note) if note else None)
        self.render(
            f"features/{index}/{hd.feature}.html",
            "head.html",
            **context,
            explanations=explanation_views(explanations),
            appearances=self.appearances.get((index, hd.feature), []),
            export_links=self.export_links(index, summary, hd.feature),
            prev_id=nav[0],
            next_id=nav[1],
            data_json=script_json_markup(data),
            page_css=static_markup("feature.css") + static_markup("head.css"),
            js=static_markup("dom.js") + static_markup("head.js"),
        )

    def write_record(
        self,
        index: int,
        summary: DictionarySummary,
        rd: RecordData,
        nav: tuple[int | None, int | None],
        note: str | None,
        explanations: Sequence[Explanation] = (),
    ) -> None:
        self.render(
            f"features/{index}/{rd.feature}.html",
            "record.html",
            **record_page_context(rd, summary, markdown_html(note) if note else None),
            explanations=explanation_views(explanations),
            export_links=self.export_links(index, summary, rd.feature),
            prev_id=nav[0],
            next_id=nav[1],
            data_json=script_json_markup(record_page_json(rd, index, nav)),
            page_css=static_markup("feature.css") + static_markup("record.css"),
            js=static_markup("dom.js") + static_markup("record.js"),
        )

    def write_prompt(self, pd: PromptData) -> PromptListing:
        """A prompt's page; returns its row in the index."""
        self.render(
            f"prompts/{pd.slug}.html",
            "prompt.html",
            **prompt_page_context(pd, self.prompt_site, self.texts),
            note_html=markdown_html(note) if (note := self.prompt_notes.get(pd.index)) else None,
            data_json=script_json_markup(prompt_page_json(pd, self.prompt_site, self.texts)),
            page_css=static_markup("feature.css") + static_markup("prompt.css"),
            js=static_markup("dom.js") + static_markup("prompt.js"),
        )
        return prompt_listing(pd, self.texts)


def is_replaceable(out_dir: Path) -> bool:
    """An existing output folder may be replaced when it is empty or a site we made."""
    if not out_dir.exists():
        return True
    if not out_dir.is_dir():
        return False
    if not any(out_dir.iterdir()):
        return True
    index = out_dir / "index.html"
    return (
        (out_dir / ".nojekyll").is_file()
        and index.is_file()
        and GENERATOR_META in index.read_text(encoding="utf-8", errors="replace")[:2000]
    )


def render_site(
    cache_dir: Path, cfg: Config, out_dir: Path, *, workers: int | None = None, pool: PagePool | None = None
) -> Path:
    """Build the site for the feature cache ``cache_dir`` into ``out_dir``; returns ``out_dir``.
    A failed render leaves a previous site at ``out_dir`` untouched. ``workers``: processes
    rendering the feature pages (None: one per core, none for a small site; 1: in this one);
    ``pool``: the Ray executor's tasks render them instead."""
    cache_dir, out_dir = Path(cache_dir), Path(out_dir)
    manifest = read_manifest(cache_dir)
    summaries = dictionary_summaries(manifest)
    notes = load_notes(cfg.resolve(cfg.site.notes), summaries) if cfg.site.notes else {}
    pages = load_pages(cfg.resolve(cfg.site.pages)) if cfg.site.pages else []
    explanations = load_explanations(cfg, site_dictionaries(summaries)) if cfg.site.explanations else {}
    if not is_replaceable(out_dir):
        raise SitegenError(f"{out_dir}: exists and is not a site made by sitegen; remove it or choose another 'out'")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        tmp.chmod(0o755)
        SiteWriter(tmp, cache_dir, cfg, manifest, notes, pages, explanations).write_all(workers, pool)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
