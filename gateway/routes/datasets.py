"""Datasets: create_dataset, list_datasets, train_dataset, dataset_info."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.deps import AccountDep, RepoDep, RequestIdDep, StateDep
from gateway.routes.common import api_router, post
from gateway.schemas import (
    CreateDatasetBody,
    DatasetBody,
    DatasetInfoBody,
    DatasetInfoOut,
    DatasetOut,
    ListDatasetsBody,
    TrainOut,
)
from gateway.service import datasets


def router() -> APIRouter:
    r = api_router()

    @post(
        r, "/api/create_dataset", DatasetOut, "Create a dataset (kind text or image, or fixed by first use)"
    )
    async def create_dataset(body: CreateDatasetBody, repo: RepoDep, account: AccountDep) -> dict[str, Any]:
        return await datasets.create_dataset(repo, account, body)

    @post(r, "/api/list_datasets", list[DatasetOut], "List this account's datasets")
    async def list_datasets(
        body: ListDatasetsBody, repo: RepoDep, account: AccountDep
    ) -> list[dict[str, Any]]:
        return await datasets.list_datasets(repo, account)

    @post(r, "/api/train_dataset", TrainOut, "Queue a full refit and evaluation of the dataset's head")
    async def train_dataset(
        body: DatasetBody, repo: RepoDep, account: AccountDep, request_id: RequestIdDep
    ) -> dict[str, Any]:
        return await datasets.train_dataset(repo, account, body.dataset, request_id)

    @post(r, "/api/dataset_info", DatasetInfoOut, "State, counts and evaluation of a dataset and its tags")
    async def dataset_info(
        body: DatasetInfoBody, repo: RepoDep, account: AccountDep, state: StateDep
    ) -> dict[str, Any]:
        return await datasets.dataset_info(repo, account, body, state.predictions)

    return r
