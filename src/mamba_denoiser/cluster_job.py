"""cluster.py's work: the panel's statistics -> K typed clusters in clusters.json.

Contract (docs/design.md, "clusters.json"): the statistics, grouping and types come from
the train split only (clustering/run.py). While the cores are free, the job also makes
every feature's statsmodels state-space fits (σ and the Kalman candidate of the later
stages) into the disk cache the later stages read.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from mamba_denoiser.cli import fail_cleanly
from mamba_denoiser.config_schema import check
from mamba_denoiser.stage import given_data, output_dir, prefit_fits, to_dict

log = logging.getLogger("mamba_denoiser")


def run_cluster(cfg: DictConfig) -> dict:
    """Cluster the panel of ``cfg.data``; write clusters.json (and plots) under the run
    directory and print the cluster table. Returns the clusters.json document."""
    from mamba_denoiser.clustering.run import cluster_table, run_clustering
    from mamba_denoiser.data.source import panel_from_config
    from mamba_denoiser.io import console
    from mamba_denoiser.tables import console_tables

    out = output_dir(cfg)
    with fail_cleanly(out):
        check(cfg, "cluster")  # typed configs: a wrong value fails before any data are read
        panel = panel_from_config(given_data(cfg)[0])  # data.path=FILE alone: a CSV
        # every clustering.* key is a keyword of run_clustering (conf/cluster.yaml)
        doc = run_clustering(panel, out, plots=cfg.plots, **to_dict(cfg.clustering))
        prefit_fits(cfg, panel, panel.continuous)
    title, cells = cluster_table(doc)
    con = console()
    for table in console_tables(cells, width=con.width, title=title):
        con.print(table)
    log.info("Wrote %s", out / "clusters.json")
    return doc
