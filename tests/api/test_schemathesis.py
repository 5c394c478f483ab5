"""Fuzz the running API from its own OpenAPI schema (schemathesis): valid and invalid requests for
every operation, as an admin (the role that reaches every endpoint), sometimes aimed at proposals
and prompts that exist. No request may get a 5xx. Bounded: a few dozen examples per operation
and mode, about half a minute per database."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.api.helpers import insert_proposal

EXAMPLES_PER_OPERATION = 25


@pytest.mark.timeout(300)
def test_no_server_errors_from_fuzzed_requests(api_env, live_server):
    real_ids = [
        insert_proposal(api_env.sessions, kind)
        for kind in ("system_prompt_edit", "rag_source", "fine_tune_dataset")
    ]
    # The corpus upload embeds in the request: load the model before the clock of the first one
    # starts (10 s read timeout), as a running API has after its first upload.
    from refinery.embed.embedder import get_embedder

    get_embedder(api_env.settings).embed(["warm-up"])
    schema = schemathesis.openapi.from_url(f"{live_server.url}/openapi.json")
    headers = api_env.auth("admin")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    requests_sent = 0

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                derandomize=True,  # the same requests every run: a failure here reproduces
                suppress_health_check=list(HealthCheck),
            )
            @given(
                case=operation.as_strategy(mode), aim=st.booleans(), pick=st.sampled_from(real_ids)
            )
            def run(case, aim, pick):  # type: ignore[no-untyped-def]
                nonlocal requests_sent
                params = case.path_parameters or {}
                if aim and "proposal_id" in params:
                    params["proposal_id"] = pick
                if aim and "app_id" in params:
                    params.update(app_id="nimbus-support", name="support")
                requests_sent += 1
                response = case.call(base_url=live_server.url, headers=headers)
                assert response.status_code < 500, (
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:500]}"
                )
                case.validate_response(response, checks=[not_a_server_error])

            try:
                run()
            except Unsatisfiable:
                # Nothing to make invalid (no parameters, no body): only the positive run counts.
                assert mode is GenerationMode.NEGATIVE, operation.label
    assert requests_sent > len(operations) * 10
