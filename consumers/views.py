from django.http import HttpRequest, JsonResponse


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving HTTP; readiness (Redis, workers) is a separate question."""
    return JsonResponse({"status": "ok"})
