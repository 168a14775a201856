"""`llm-train-api webhooks ...`: register, list and delete webhook endpoints and read their
deliveries (client commands); and `llm-train-api webhooks-sender`, a process that only
delivers webhooks (a server command: its imports are loaded when it runs)."""

from __future__ import annotations

import click

from llm_train_api.cli.common import CONTEXT, client_command, print_json, table, when
from llm_train_api.client import Client

# The native event names; `webhooks create --event` accepts any the server knows.
NATIVE_EVENTS = ("job.succeeded", "job.failed", "job.cancelled", "job.paused")


@click.group(context_settings=CONTEXT)
def webhooks() -> None:
    """Signed webhooks on the service at --url (LLM_TRAIN_API_URL)."""


@client_command(webhooks, "create")
@click.argument("endpoint", metavar="ENDPOINT_URL")
@click.option("--event", "events", multiple=True, metavar="TYPE",
              help="An event type to receive (repeat it); default every native one: "
                   + ", ".join(NATIVE_EVENTS) + ". OpenAI-named ones: fine_tuning.job.*.")
@click.option("--description", help="A note for yourself.")
def create(api: Client, endpoint: str, events: tuple[str, ...], description: str | None,
           as_json: bool) -> None:
    """Register ENDPOINT_URL; prints the signing secret, which is shown this once."""
    hook = api.create_webhook(endpoint, events or None, description=description)
    if as_json:
        print_json(hook)
        return
    click.echo(f"{hook.id}: {hook.url} ({', '.join(hook.events)}; {hook.scope} jobs)")
    click.echo(f"secret: {hook.secret}")
    click.echo("Store the secret now: it cannot be shown again.", err=True)


@client_command(webhooks, "list")
def list_cmd(api: Client, as_json: bool) -> None:
    """List webhook endpoints (yours; an admin's: everyone's)."""
    items = api.list_webhooks()
    if as_json:
        print_json(items)
        return
    table(["ID", "URL", "EVENTS", "SCOPE", "OWNER", "CREATED (UTC)"],
          [[h.id, h.url, ",".join(h.events), h.scope, h.owner, when(h.created_at)]
           for h in items])


@client_command(webhooks, "delete")
@click.argument("webhook_ids", nargs=-1, required=True)
def delete(api: Client, webhook_ids: tuple[str, ...], as_json: bool) -> None:
    """Delete endpoints (their pending deliveries are not sent)."""
    for webhook_id in webhook_ids:
        api.delete_webhook(webhook_id)
        if as_json:
            print_json({"id": webhook_id, "deleted": True})
        else:
            click.echo(f"{webhook_id}: deleted")


@client_command(webhooks, "deliveries")
@click.argument("webhook_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True,
              help="How many, newest first.")
def deliveries(api: Client, webhook_id: str, limit: int, as_json: bool) -> None:
    """What was sent to an endpoint, when, the answer, and the next retry."""
    items = api.webhook_deliveries_page(webhook_id, limit=limit).items
    if as_json:
        print_json(items)
        return
    table(["ID", "EVENT", "JOB", "STATE", "ATTEMPTS", "LAST ANSWER", "LAST (UTC)",
           "NEXT (UTC)"],
          [[d.id, d.event_type, d.job_id, d.state, d.attempts,
            d.last_status_code if d.last_status_code is not None else (d.last_error or "-"),
            when(d.last_attempt_at), when(d.next_attempt_at)] for d in items])


@click.command(context_settings=CONTEXT)
def webhooks_sender() -> None:
    """Deliver webhooks from the outbox, until SIGTERM or Ctrl-C.

    Workers already run a sender each (LLM_TRAIN_API_WEBHOOK_SENDER); run this where no
    worker runs, or to deliver with workers stopped. Any number may run at once.
    """
    import logging
    import signal

    from llm_train_api.config import Settings
    from llm_train_api.runtime import Runtime
    from llm_train_api.services.webhooks.sender import SenderConfig, WebhookSender

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.load()
    logging.getLogger("llm_train_api").setLevel(settings.LOG_LEVEL.upper())
    runtime = Runtime.build(settings)
    sender = WebhookSender(runtime.webhooks, SenderConfig.from_settings(settings))

    def on_signal(_signum: int, _frame: object) -> None:
        sender.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        sender.run()
    finally:
        runtime.close()
