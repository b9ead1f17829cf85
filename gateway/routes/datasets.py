"""Datasets: create_dataset, list_datasets, train_dataset, dataset_info."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import AccountDep, RequestIdDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import (
    CreateDatasetBody,
    DatasetInfoBody,
    DatasetInfoOut,
    DatasetOut,
    ListDatasetsBody,
    TrainBody,
    TrainOut,
)
from gateway.service import datasets


async def create_dataset(body: CreateDatasetBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: datasets.create_dataset(uow, account, body)))


async def list_datasets(body: ListDatasetsBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: datasets.list_datasets(uow, account)))


async def train_dataset(body: TrainBody, state: StateDep, account: AccountDep, request_id: RequestIdDep) -> Response:
    return render(await state.transact(
        lambda uow: datasets.train_dataset(uow, account, body.dataset, request_id, body.force)))


async def dataset_info(body: DatasetInfoBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: datasets.dataset_info(uow, account, body, state.predictions)))


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/create_dataset", create_dataset, DatasetOut,
         "Create a dataset (kind text or image, or fixed by first use)")
    post(r, "/api/list_datasets", list_datasets, list[DatasetOut], "List this account's datasets")
    post(r, "/api/train_dataset", train_dataset, TrainOut,
         "Queue a full refit and evaluation of the dataset's head (force: make it live past the promotion gate)")
    post(r, "/api/dataset_info", dataset_info, DatasetInfoOut, "State, counts and evaluation of a dataset and its tags")
    return r
