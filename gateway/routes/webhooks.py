"""Webhooks: create_webhook, list_webhooks, delete_webhook."""

from __future__ import annotations

from fastapi import APIRouter, Response

from gateway.deps import AccountDep, StateDep
from gateway.routes.common import api_router, post, render
from gateway.schemas import (
    CreateWebhookBody,
    DeleteWebhookBody,
    DeleteWebhookOut,
    ListWebhooksBody,
    WebhookCreatedOut,
    WebhookOut,
)
from gateway.service import webhooks


async def create_webhook(body: CreateWebhookBody, state: StateDep, account: AccountDep) -> Response:
    rules = webhooks.url_rules(state.settings.fetch_allow_hosts, state.settings.fetch_allow_ports)
    limit = state.settings.max_webhooks
    return render(await state.transact(lambda uow: webhooks.create_webhook(uow, account, body, rules, limit)))


async def list_webhooks(body: ListWebhooksBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: webhooks.list_webhooks(uow, account)))


async def delete_webhook(body: DeleteWebhookBody, state: StateDep, account: AccountDep) -> Response:
    return render(await state.transact(lambda uow: webhooks.delete_webhook(uow, account, body.id)))


def router() -> APIRouter:
    r = api_router()
    post(r, "/api/create_webhook", create_webhook, WebhookCreatedOut,
         "Subscribe a URL to training events (the signing secret is shown only in this answer)")
    post(r, "/api/list_webhooks", list_webhooks, list[WebhookOut],
         "List this account's webhooks and their last delivery")
    post(r, "/api/delete_webhook", delete_webhook, DeleteWebhookOut, "Delete a webhook; pending deliveries stop")
    return r
