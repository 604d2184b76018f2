"""Panel -> denoised panel with each cluster's checkpoint: causal (default) or offline.

Modules: ``models`` (a checkpoint read back), ``plan`` (which windows serve which rows),
``candidates`` (the estimators a feature can take), ``gate`` (SURE on validation rows),
``cluster`` (plan -> candidates -> gate -> assemble for one cluster), ``panel`` (every
cluster of a panel, the loop that denoise.py and evaluate.py share).
"""

from mamba_denoiser.inference.candidates import CANDIDATES
from mamba_denoiser.inference.cluster import SAMPLERS, ClusterResult, denoise_cluster, plan_noise
from mamba_denoiser.inference.gate import probe_divergence, sure_gain_db
from mamba_denoiser.inference.models import ClusterModel, load_cluster_model
from mamba_denoiser.inference.plan import MODES, run_windows, serving_plan

__all__ = [
    "CANDIDATES",
    "MODES",
    "SAMPLERS",
    "ClusterModel",
    "ClusterResult",
    "denoise_cluster",
    "load_cluster_model",
    "plan_noise",
    "probe_divergence",
    "run_windows",
    "serving_plan",
    "sure_gain_db",
]
