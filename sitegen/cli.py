"""The ``sitegen`` command line: validate, build, render, export, serve, check, init.

Bad input prints one line (``error: ...``) and exits 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from sitegen.config import Config
from sitegen.errors import SitegenError
from sitegen.report import log, show_messages

if TYPE_CHECKING:
    from sitegen.imports import RecordFolder
    from sitegen.render.explanation_types import SiteDictionary
    from sitegen.sources import Sources

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    default="site_config.yaml",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Site config (YAML).",
)
OUT_OPTION = click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(path_type=Path),
    help="Output folder of the site (default: the config's 'out').",
)


def output_dir(cfg: Config, out: Path | None) -> Path:
    target = (out if out is not None else cfg.resolve(cfg.out)).absolute()
    if target.exists() and not target.is_dir():
        raise SitegenError(f"out: {target} exists and is not a folder")
    parent = next(p for p in target.parents if p.exists())
    try:  # a real write probe: os.access says yes to root even on read-only mounts
        os.rmdir(tempfile.mkdtemp(dir=parent, prefix=".sitegen-probe-"))
    except OSError as err:
        raise SitegenError(f"out: cannot write under {parent} ({err.strerror})") from None
    return target


def cache_dir(cfg: Config) -> Path:
    return cfg.resolve(cfg.cache)


def describe_imports(folders: list[RecordFolder]) -> list[str]:
    return [
        f"dictionary '{f.name}': NeuronRecords imported from {f.path} (layers {', '.join(map(str, f.layers))}), "
        f"{len(f.files)} records to build"
        for f in folders
    ]


def describe(sources: Sources) -> str:
    m, data = sources.model, sources.data
    lines = [
        f"model: {sources.config.model.name} ({m.cfg.n_layers} layers, d_model {m.cfg.d_model}, "
        f"d_mlp {m.cfg.d_mlp}, vocab {m.cfg.d_vocab}, {m.cfg.device}, {m.cfg.dtype})",
        f"hooks: {', '.join(sorted({d.hook_name for d in sources.dictionaries}))}",
    ]
    for d in sources.dictionaries:
        lines.append(
            f"dictionary '{d.name}': {d.kind} on {d.hook_name}, d_in {d.d_in}, d_sae {d.d_sae}, "
            f"{len(d.feature_ids)} features to build"
        )
    for h in sources.heads:
        lines.append(
            f"dictionary '{h.name}': attention heads of layers {', '.join(map(str, h.layers))} "
            f"({h.n_heads} query heads, {h.n_kv_heads} key/value heads per layer), {len(h.feature_ids)} heads to build"
        )
    lines += describe_imports(sources.imports)
    lines.append(
        f"dataset: {data.tokens.shape[0]} sequences x {data.tokens.shape[1]} tokens = {data.tokens.numel()} "
        f"tokens ({int((~data.ignore).sum())} counted) from {data.n_documents} documents"
    )
    return "\n".join(lines)


def explanations_line(cfg: Config, dictionaries: list[SiteDictionary]) -> str:
    """Load ``site.explanations`` against the dictionaries the build makes (SitegenError on bad
    input); one line saying what they hold."""
    from sitegen.render.explanations import load_explanations, summary_line

    return summary_line(load_explanations(cfg, dictionaries))


def built_dictionaries(sources: Sources) -> list[SiteDictionary]:
    from sitegen.render.explanations import source_dictionaries

    return source_dictionaries(sources)


def import_dictionaries(folders: list[RecordFolder]) -> list[SiteDictionary]:
    from sitegen.render.explanations import site_dictionaries

    return site_dictionaries([f.summary() for f in folders])


@click.group()
@click.option("--debug", is_flag=True, expose_value=False, help="Show tracebacks (read by main()).")
@click.version_option(package_name="sitegen-dashboards")
def cli() -> None:
    """Static-site generator for interpretability dashboards."""


@cli.command()
@CONFIG_OPTION
def validate(config_path: Path) -> None:
    """Load and check every source; print a summary without computing features."""
    from sitegen.config import load_config
    from sitegen.imports import check_records, record_folders

    cfg = load_config(config_path)
    if not cfg.needs_model():  # imported NeuronRecords alone: no model, no dataset
        folders = record_folders(cfg)
        click.echo("\n".join(describe_imports(folders)))
        dictionaries = import_dictionaries(folders)
    else:
        from sitegen.sources import load_sources

        sources = load_sources(cfg)
        click.echo(describe(sources))
        dictionaries, folders = built_dictionaries(sources), sources.imports
    for folder in folders:
        check_records(folder)
    if cfg.site.explanations:
        click.echo(explanations_line(cfg, dictionaries))
    click.echo("config OK")


@cli.command()
@CONFIG_OPTION
@OUT_OPTION
@click.option(
    "--executor",
    "executor_kind",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where the shards run (default: the config's executor.kind).",
)
@click.option("--address", default=None, help='Ray cluster: "auto" or ray://host:port (default: executor.address).')
def build(config_path: Path, out: Path | None, executor_kind: str | None, address: str | None) -> None:
    """Compute every feature's data (resumable) and render the site."""
    from sitegen.config import load_config
    from sitegen.render import render_site

    cfg = load_config(config_path)
    if executor_kind:
        cfg.executor.kind = executor_kind  # type: ignore[assignment]  # one of click's choices
    if address:
        if cfg.executor.kind != "ray":
            raise SitegenError("--address: only with --executor ray (or executor.kind: ray)")
        cfg.executor.address = address
    out_dir = output_dir(cfg, out)
    if not cfg.needs_model():
        build_imports(cfg, out_dir)
        return
    from sitegen.compute import build_feature_cache
    from sitegen.compute.executors import make_executor
    from sitegen.sources import load_sources

    if cfg.executor.kind == "ray":
        from sitegen.compute.executors import import_ray

        import_ray()  # a missing extra is one line before the model loads
    sources = load_sources(cfg)
    log.info(describe(sources))
    if cfg.site.explanations:  # checked before the model pass, not after it
        log.info(f"[sitegen] {explanations_line(cfg, built_dictionaries(sources))}")
    cache = cache_dir(cfg)
    executor = make_executor(sources, max(cfg.executor.token_shards, cfg.executor.feature_shards))
    try:
        stats = build_feature_cache(sources, cache, executor=executor)["stats"]
        report_build(sources, stats)
        render_site(cache, cfg, out_dir, pool=executor.page_pool())
    finally:
        executor.close()
    click.echo(f"site written to {out_dir}")


def report_build(sources: Sources, stats: dict) -> None:
    n_features = sum(len(d.feature_ids) for d in sources.dictionaries)
    n_heads = sum(len(h.feature_ids) for h in sources.heads)
    n_imported = sum(len(f.files) for f in sources.imports)
    log.info(
        f"[sitegen] {n_features} features"
        + (f" and {n_heads} attention heads" if n_heads else "")
        + (f" (and {n_imported} imported NeuronRecords)" if n_imported else "")
        + f" from {stats['model_passes']} model pass(es); "
        f"{stats['reused_batches']} feature batches reused; {stats['n_nonfinite']} non-finite activations excluded"
    )


def build_imports(cfg: Config, out_dir: Path) -> None:
    """``sitegen build`` of a config whose dictionaries are all imported NeuronRecords: no torch,
    no model, no dataset."""
    from sitegen.imports import build_record_cache, record_folders
    from sitegen.render import render_site

    folders = record_folders(cfg)
    log.info("\n".join(describe_imports(folders)))
    if cfg.site.explanations:
        log.info(f"[sitegen] {explanations_line(cfg, import_dictionaries(folders))}")
    build_record_cache(cfg, folders, cache_dir(cfg))
    log.info(f"[sitegen] {sum(len(f.files) for f in folders)} imported NeuronRecords (no model loaded)")
    render_site(cache_dir(cfg), cfg, out_dir)
    click.echo(f"site written to {out_dir}")


@cli.command()
@CONFIG_OPTION
@OUT_OPTION
def render(config_path: Path, out: Path | None) -> None:
    """Re-render the site from the feature cache, without recomputing (refused when the
    config's feature keys changed since the cache was built)."""
    from sitegen.cache.manifest import renderable_manifest
    from sitegen.config import load_config
    from sitegen.render import render_site

    cfg = load_config(config_path)
    out_dir = output_dir(cfg, out)
    cache = cache_dir(cfg)
    renderable_manifest(cache, cfg)
    render_site(cache, cfg, out_dir)
    click.echo(f"site written to {out_dir}")


@cli.command("export")
@click.option("--format", "fmt", default=None, help="neuron-records | neuronpedia")
@CONFIG_OPTION
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(path_type=Path),
    help="Output folder (default: export/<format> next to the config).",
)
def export_command(fmt: str | None, config_path: Path, out: Path | None) -> None:
    """Write the feature cache in another tool's layout, without recomputing (refused when the
    config's feature keys changed since the cache was built)."""
    from sitegen.cache.manifest import renderable_manifest
    from sitegen.config import load_config
    from sitegen.export import ExportInput, check_format, export_to

    name = check_format(fmt)
    cfg = load_config(config_path)
    out_dir = output_dir(cfg, out if out is not None else cfg.resolve(f"export/{name}"))
    cache = cache_dir(cfg)
    manifest = renderable_manifest(cache, cfg)
    export_to(name, ExportInput.read(cache, cfg, manifest), out_dir)
    click.echo(f"{name} export written to {out_dir}")


@cli.command()
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--port", default=8000, show_default=True, type=int)
def serve(site: Path, port: int) -> None:
    """Preview a built site on http://127.0.0.1:PORT/ (Ctrl-C stops)."""
    import functools
    import http.server

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        raise SitegenError(f"--port: cannot listen on 127.0.0.1:{port} ({err.strerror})") from None
    click.echo(f"serving {site} on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")


@cli.command()
@click.argument("site", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check(site: Path) -> None:
    """Verify that every internal link and asset of a built site resolves."""
    from sitegen.render import check_site

    problems = check_site(site)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise SitegenError(f"{site}: {len(problems)} broken link(s) or asset(s)")
    click.echo(f"{site}: all links and assets resolve")


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Scaffold a starter project: config, pages/about.md, a GitHub Pages workflow."""
    from sitegen.render import scaffold_project

    scaffold_project(directory)
    click.echo(f"starter project written to {directory}; next: cd {directory} && sitegen build")


def main() -> None:
    """The ``sitegen`` command: a SitegenError (or a click usage error) prints one line and exits
    2, an OSError names its file; ``--debug`` lets them raise with their traceback instead."""
    debug = "--debug" in sys.argv[1:]
    show_messages()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except click.ClickException as err:
        if debug and isinstance(err, SitegenError):
            raise
        err.show()
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        click.echo("interrupted: finished feature batches are kept in the cache; rerun to resume", err=True)
        sys.exit(130)
    except OSError as err:
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        click.echo(f"error: {where}{err.strerror or err}", err=True)
        sys.exit(2)
