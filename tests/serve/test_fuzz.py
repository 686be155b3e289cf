"""Property-based fuzzing of the HTTP API from its own OpenAPI spec (schemathesis, in-process ASGI).

Operations are driven with plain Hypothesis ``@given`` over ``operation.as_strategy()`` rather than
``schemathesis.pytest.from_fixture``, whose plugin does not run under pytest 9.
"""

from __future__ import annotations

from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402  (after the importorskip)
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import negative_data_rejection, positive_data_acceptance  # noqa: E402

MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def api_schema(encoder, index_dir: Path):
    from medvl.serve.app import ServeSettings, create_app

    app = create_app(encoder, index_dir, settings=ServeSettings(max_upload_mb=0.5))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _has_empty_multipart_list(case) -> bool:
    return (case.media_type or "").startswith("multipart/") and isinstance(case.body, dict) and any(
        v == [] for v in case.body.values())


def test_api_never_errors_and_matches_its_schema(api_schema) -> None:
    """No 5xx, status codes/content types/bodies as documented, schema-invalid input rejected with 4xx.

    Positive and negative examples for every operation. ``positive_data_acceptance`` is excluded
    on purpose: the schema can only say "a binary file", and random bytes that fit it are rightly
    refused with 415 (not PNG/JPEG/TIFF/DICOM).
    """
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/embed", "POST /v1/search", "POST /v1/zero-shot", "GET /healthz", "GET /metrics"} <= labels
    seen: dict[str, int] = {}
    for op in operations:
        strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

        @given(case=strategy)  # ``label`` is passed explicitly (binding the loop variable)
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                         HealthCheck.data_too_large])
        def run(case, label: str) -> None:
            excluded = [positive_data_acceptance]
            if _has_empty_multipart_list(case):
                # An empty list in a multipart body serialises to "no field at all", which is a valid
                # request; schemathesis still counts it as negative data (a false positive).
                excluded.append(negative_data_rejection)
            response = case.call_and_validate(excluded_checks=excluded)
            seen[label] = seen.get(label, 0) + 1
            assert response.status_code < 500

        run(label=op.label)
    # Parameterless GETs have a single distinct request; every POST must really have been explored.
    assert all(seen.get(label, 0) >= (5 if label.startswith("POST") else 1) for label in labels), seen
