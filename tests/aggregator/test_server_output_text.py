"""The text the aggregator serves for an output: decoded from the signed token ids when it has the
model's tokenizer, since the primary's own ``text`` is signed by nobody."""

from __future__ import annotations

from pathlib import Path

from avs.prompts import PromptEncoder
from avs.rpc.operator.v1 import operator_pb2 as op
from avs_aggregator.pipeline import Pipeline, PipelineSettings
from avs_aggregator.server import AggregatorServicer, IntakeLimits, ServedModel, build_status
from avs_aggregator.store import RequestState, Store
from tests.aggregator.fakes import DOMAIN, MODEL_ID, FakeNetwork, make_envelope


def test_served_text_is_decoded_from_the_certified_tokens(tmp_path: Path) -> None:
    from tests.inference.conftest import build_tokenizer

    build_tokenizer(tmp_path / "model")
    encoder = PromptEncoder(tmp_path / "model")
    network = FakeNetwork([{0: 50}, {0: 50}])  # the fake primaries all say the text is "text"
    settings = PipelineSettings(batch_max_size=1, batch_max_latency=0.0, workers=1)
    pipeline = Pipeline(DOMAIN, Store(f"sqlite:///{tmp_path / 'agg.sqlite'}"), network, network, network, settings)
    try:
        request_hash = pipeline.submit(make_envelope(1))
        pipeline.run_until_idle()
        row = pipeline.store.get_request(request_hash)
        assert row is not None and row.state == RequestState.CERTIFIED and row.output_text == "text"
        with_tokenizer = AggregatorServicer(
            pipeline, {MODEL_ID: ServedModel("tiny", MODEL_ID, encoder)}, IntakeLimits(max_new_tokens=64)
        )
        status = build_status(pipeline, row, with_tokenizer._decoder(row))
        decoded = encoder.tokenizer.decode(list(status.output_token_ids), skip_special_tokens=True)
        assert status.output_text == decoded != "text"
        assert status.certificate.output_text == decoded
        assert op.InferenceRequest.FromString(row.envelope).model_id == MODEL_ID
        without = AggregatorServicer(
            pipeline, {MODEL_ID: ServedModel("tiny", MODEL_ID)}, IntakeLimits(max_new_tokens=64)
        )
        assert build_status(pipeline, row, without._decoder(row)).output_text == "text"  # nothing to check with
    finally:
        pipeline.close()
