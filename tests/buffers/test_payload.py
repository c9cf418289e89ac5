from __future__ import annotations

import dataclasses

import pytest
import torch

from embxfer.buffers.layout import FIELDS, BufferLayout, Field
from embxfer.buffers.payload import EmbeddingPayload, random_payload

from .helpers import SMALL, make_payload


def test_from_embeddings_fills_defaults() -> None:
    embeddings = torch.ones(5, 8, dtype=torch.bfloat16)
    payload = EmbeddingPayload.from_embeddings(embeddings, mrope_position_delta=-3)
    payload.validate(SMALL)
    assert payload.num_tokens == 5
    assert torch.equal(payload.fill_ids, torch.zeros(5, dtype=torch.int32))
    assert payload.mrope_positions.tolist() == [[i, i, i] for i in range(5)]
    assert payload.mrope_position_delta == -3


def test_from_embeddings_keeps_given_fields() -> None:
    fill_ids = torch.arange(3, dtype=torch.int32)
    payload = EmbeddingPayload.from_embeddings(torch.ones(3, 8, dtype=torch.bfloat16), fill_ids)
    assert payload.fill_ids is fill_ids


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("embeddings", torch.zeros(6, 9, dtype=torch.bfloat16), "embeddings: expected shape"),
        ("embeddings", torch.zeros(6, 8, dtype=torch.float16), "embeddings: expected shape"),
        ("embeddings", torch.zeros(48, dtype=torch.bfloat16), r"expected \(T, hidden\)"),
        ("fill_ids", torch.zeros(5, dtype=torch.int32), "fill_ids: expected shape"),
        ("fill_ids", torch.zeros(6, dtype=torch.int64), "fill_ids: expected shape"),
        ("mrope_positions", torch.zeros(6, 2, dtype=torch.int32), "mrope_positions"),
    ],
)
def test_validate_names_the_bad_field(field: Field, value: torch.Tensor, message: str) -> None:
    fields = {name: make_payload(6).tensor(name) for name in FIELDS} | {field: value}
    payload = EmbeddingPayload(fields["embeddings"], fields["fill_ids"], fields["mrope_positions"])
    with pytest.raises(ValueError, match=message):
        payload.validate(SMALL)


def test_validate_rejects_empty_payload() -> None:
    payload = EmbeddingPayload.from_embeddings(torch.zeros(0, 8, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="no tokens"):
        payload.validate(SMALL)


def test_equals_is_byte_exact() -> None:
    payload = make_payload(7, seed=1)
    assert payload.equals(make_payload(7, seed=1))
    assert not payload.equals(make_payload(7, seed=2))
    assert not payload.equals(dataclasses.replace(payload, mrope_position_delta=10**6))
    changed = payload.fill_ids.clone()
    changed[3] += 1
    assert not payload.equals(dataclasses.replace(payload, fill_ids=changed))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_random_payload_is_valid_and_finite(dtype: torch.dtype) -> None:
    layout = BufferLayout(num_blocks=4, block_size=4, hidden_size=64, embedding_dtype=dtype)
    payload = random_payload(50, layout, torch.Generator().manual_seed(0))
    payload.validate(layout)
    assert bool(torch.isfinite(payload.embeddings).all())
    assert payload.equals(payload)  # NaN would make this fail
