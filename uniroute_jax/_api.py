"""The public names of `uniroute_jax`, imported together on first use of any of them (see `__init__`)."""

from uniroute_jax._src.baselines import oracle_estimates, zero_router_estimates
from uniroute_jax._src.curves import (
    CalibratedResult,
    CalibratedRoute,
    Calibration,
    CurvePoints,
    ExactCurve,
    apply_calibration,
    calibrate,
    curve_at,
    curve_points,
    exact_curve,
    route_calibrated,
)
from uniroute_jax._src.costs import Prices, prices, prices_from_cost_map, request_costs
from uniroute_jax._src.drift import DriftReport, drift_report, plot_drift
from uniroute_jax._src.data import (
    RoutingDataset,
    load_alpacaeval,
    load_embedllm,
    load_folder,
    load_routerbench,
    load_routerbench_partial,
    load_routerdc,
    load_shared,
    save_folder,
)
from uniroute_jax._src.embedding import TextEmbedder, embed_texts, resolve_model_dir
from uniroute_jax._src.error_vectors import DEFAULT_ALPHA, ErrorVectors, error_vectors
from uniroute_jax._src.estimators import Estimator, fit_estimator
from uniroute_jax._src.evaluation import EvaluationResult, ProtocolConfig, evaluate, synthetic_dataset
from uniroute_jax._src.fixed_pool import FixedPoolConfig, FixedPoolRouter, random_router_estimates
from uniroute_jax._src.kmeans import KMeansResult, assign_clusters, kmeans
from uniroute_jax._src.knn import knn_estimates, knn_estimates_multi
from uniroute_jax._src.explain import Decision, explain
from uniroute_jax._src.feature_maps import HardMap, SoftMap
from uniroute_jax._src.feedback import observe, observe_file
from uniroute_jax._src.learned_map import LearnedMapConfig
from uniroute_jax._src.metrics import (
    CurveMetrics,
    PoolReference,
    SignTestResult,
    ThresholdCost,
    aiq,
    apgr,
    area,
    auc,
    cpt,
    curve_metrics,
    interpolate_curve,
    pareto_mask,
    peak_quality,
    pool_reference,
    qnc,
    sign_test,
    upper_hull_mask,
)
from uniroute_jax._src.onboarding import ErrorIntervals, ValidationSize, error_intervals, validation_prompts_needed
from uniroute_jax._src.online import OnlineDecision, OnlineLearner, OnlineReplay, OnlineState, replay_online
from uniroute_jax._src.pacing import (
    Budget,
    Pacer,
    PacerParams,
    PacerState,
    ReplayResult,
    lambda_span,
    replay,
    warm_start,
)
from uniroute_jax._src.pool import Pool
from uniroute_jax._src import streams
from uniroute_jax._src.router import Curves, Routing, RoutingTable, UniRouter
from uniroute_jax._src.routing import (
    RouteResult,
    RoutingUnits,
    SweepResult,
    lambda_grid,
    make_units,
    route,
)
from uniroute_jax._src.sweeps import sweep
from uniroute_jax._src.selection import select_prompts
from uniroute_jax._src.shadow import ShadowReport, read_shadow_log, shadow_report
from uniroute_jax._src.sharding import (
    pool_mesh,
    shard_trials,
    sharded_exact_curve,
    sharded_sweep,
    trial_mesh,
    trial_vmap,
)
from uniroute_jax._src.synthetic import (
    LLMs,
    PromptSpace,
    Prompts,
    World,
    WorldConfig,
    error_probability,
    make_world,
    sample_llms,
    sample_prompt_space,
    sample_prompts,
    synthetic_world,
)
