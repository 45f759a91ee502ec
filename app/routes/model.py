"""``GET /v1/model``: what is being served and how well it did in training."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import APIKey, PredictorDep
from app.schemas import ErrorResponse, ModelInfoResponse

router = APIRouter(prefix="/v1", tags=["model"], dependencies=[APIKey])


@router.get("/model", response_model=ModelInfoResponse, responses={401: {"model": ErrorResponse}})
def model_info(predictor: PredictorDep) -> dict:
    """Classes, base models, meta-learner, TTA policy, training metrics, the bundle's sha256, and every way it can
    answer (stack, cascade, student) with its accuracy, log-loss and cost."""
    manifest = predictor.manifest
    meta = manifest.meta_learner
    return {
        "name": predictor.name,
        "version": predictor.version,
        "bundle_sha256": predictor.sha256,
        "classes": predictor.classes,
        "image_sizes": predictor.sizes,
        "base_models": [
            b.model_dump(
                include={"name", "architecture", "image_size", "preprocessing", "weights", "weights_sha256", "runtime"}
            )
            for b in manifest.base_models
        ],
        "meta_learner": {
            "kind": meta.kind,
            "reason": meta.selection.reason,
            "leaderboard": meta.selection.leaderboard,
        },
        "tta": {**manifest.tta.model_dump(), "max_views": predictor.max_views()},
        "protocol": manifest.protocol.model_dump(),
        "metrics": manifest.metrics,
        "custom_modules": manifest.custom_modules,
        "signature_verified": predictor.trust.verify_key is not None,
        "runtime": predictor.runtime_info(),
        "serving": predictor.serving_info(),
    }
