"""Python client of the llm_train_api service (``pip install 'llm-train-api[client]'``).

Needs only `requests`: neither Flask nor torch is imported.

    from llm_train_api.client import Client, NotFound

    with Client.from_env() as api:          # LLM_TRAIN_API_URL, LLM_TRAIN_API_TOKEN
        job = api.create_job("gpt-nano", "builtin:tinytext", {"max_steps": 200})
        for line in api.follow_logs(job.id):
            print(line.text)
        print(api.get_job(job.id).status)
"""

from llm_train_api.client.client import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    Client,
    LogFollower,
    RetryPolicy,
    new_job_id,
)
from llm_train_api.client.errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeout,
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    GatewayTimeout,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    ServerError,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnexpectedResponse,
    UnsupportedMediaType,
    ValidationError,
)
from llm_train_api.client.models import (
    TERMINAL_STATUSES,
    Artifact,
    Dataset,
    Health,
    Identity,
    Job,
    JobEvent,
    LogLine,
    MetricPoint,
    Model,
    Page,
    Progress,
    to_dict,
)
from llm_train_api.client.webhooks import Webhook, WebhookDelivery

__all__ = [
    "DEFAULT_TIMEOUT", "DEFAULT_URL", "TERMINAL_STATUSES", "ApiConnectionError", "ApiError",
    "ApiTimeout", "Artifact", "BadGateway", "BadRequest", "Client", "Conflict", "Dataset",
    "Forbidden", "GatewayTimeout", "Health", "Identity", "Job", "JobEvent", "LogFollower",
    "LogLine",
    "MethodNotAllowed", "MetricPoint", "Model", "NotFound", "Page", "PayloadTooLarge",
    "PreconditionFailed", "Progress", "RetryPolicy", "ServerError", "ServiceUnavailable",
    "TooManyRequests", "Unauthorized", "UnexpectedResponse", "UnsupportedMediaType",
    "ValidationError", "Webhook", "WebhookDelivery", "new_job_id", "to_dict",
]
