"""GET /model and GET /model/params."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.deps import ServiceDep, require_api_key
from app.schemas import ModelInfo, ModelParamsResponse, ParameterInfo, error_responses

router = APIRouter(prefix="/model", tags=["model"], dependencies=[Depends(require_api_key)])
MAX_VALUES = 1000
NOT_READY = error_responses({503: "model not loaded"})


@router.get("", response_model=ModelInfo, responses=NOT_READY)
async def model_info(service: ServiceDep) -> ModelInfo:
    """The artifact's metadata, the device, and when and how fast loading went."""
    return ModelInfo(**service.predictor.describe())


@router.get("/params", response_model=ModelParamsResponse, responses=NOT_READY)
async def model_params(
    service: ServiceDep,
    values: Annotated[
        int, Query(ge=0, le=MAX_VALUES, description="also return the first N values of each parameter")
    ] = 0,
) -> ModelParamsResponse:
    """Every parameter: shape, dtype, size and statistics; like the quickstart's `param[:2]` with ?values=N."""
    predictor = service.predictor
    parameters = [
        ParameterInfo(
            **summary.model_dump(), values=predictor.parameter_values(summary.name, values) if values else None
        )
        for summary in predictor.parameters
    ]
    total = sum(p.numel for p in parameters)
    return ModelParamsResponse(
        parameters=parameters,
        total_parameters=total,
        trainable_parameters=sum(p.numel for p in parameters if p.requires_grad),
        total_bytes=sum(p.numel() * p.element_size() for p in predictor.model.parameters()),
        module_tree=predictor.module_tree(),
    )
