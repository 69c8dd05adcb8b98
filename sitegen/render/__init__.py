"""Stage 3 of the pipeline: the feature cache -> a static, offline site.

- ``render_site(cache_dir, cfg, out_dir)``: build the site (atomically replacing
  a previous one) and return ``out_dir``.
- ``check_site(site_dir)``: problems with a built site's links and assets.
- ``scaffold_project(dir)``: a starter project for ``sitegen init``.
"""

from sitegen.render.check import check_site
from sitegen.render.scaffold import scaffold_project
from sitegen.render.site import render_site

__all__ = ["check_site", "render_site", "scaffold_project"]
