"""What to label next and similar items: update_dataset, suggest_labels, search."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import AccountDep, StateDep
from gateway.infra.searchindex import SearchIndex
from gateway.routes.common import api_router, post, render
from gateway.schemas import DatasetOut, SearchBody, SearchHitOut, SuggestionOut, SuggestLabelsBody, UpdateDatasetBody
from gateway.service import datasets, search, suggest


async def update_dataset(body: UpdateDatasetBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: datasets.update_dataset(uow, account, body)))


async def suggest_labels(body: SuggestLabelsBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: suggest.suggest_labels(uow, account, body)))


def router() -> APIRouter:
    r = api_router()
    indexes: list[SearchIndex] = []  # this app's search index, made with the first search

    async def search_items(body: SearchBody, state: StateDep, account: AccountDep) -> Response:
        if not indexes:
            indexes.append(SearchIndex(state.settings.search_cache_s, state.settings.search_cache_datasets))
        return render(await search.search(state, indexes[0], account, body))

    post(r, "/api/update_dataset", update_dataset, DatasetOut, "Change a dataset's title or keep_inputs")
    post(r, "/api/suggest_labels", suggest_labels, list[SuggestionOut],
         "What to label next: items near a tag's threshold (spread out) and reports the scores contradict")
    post(r, "/api/search", search_items, list[SearchHitOut],
         "The dataset's items nearest a text or an image (cosine over the stored embeddings)")
    return r
