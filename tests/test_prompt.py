"""Prompt layout and token spans from the offset mapping, with the real default tokenizer."""

from __future__ import annotations

from core_rerank.prompt import INSTRUCTION, QUERY_LABEL, TokenSpans, build_prompt, chat_markers


def test_chat_markers_come_from_the_template(default_rr):
    markers = chat_markers(default_rr.loaded_model.tokenizer)
    assert markers.from_template
    assert markers.prefix.endswith("<|im_start|>user\n")
    assert markers.suffix.startswith("<|im_end|>") and markers.suffix.endswith("<|im_start|>assistant\n")


def test_layout_and_duplicate_documents_get_their_own_spans(default_rr):
    markers = chat_markers(default_rr.loaded_model.tokenizer)
    docs = ["same text here", "other", "same text here"]
    p = build_prompt(markers, docs, "what?")
    assert [p.text[a:b] for a, b in p.doc_spans] == docs
    assert p.doc_spans[0] != p.doc_spans[2]
    assert p.text[slice(*p.query_span)] == INSTRUCTION + QUERY_LABEL + "what?"
    assert p.text.index("[1] same") < p.text.index("[2] other") < p.text.index("[3] same") < p.query_span[0]

    tok = default_rr.loaded_model.tokenizer
    enc = tok(p.text, add_special_tokens=False, return_offsets_mapping=True)
    spans = TokenSpans(enc["offset_mapping"])
    t0, t2 = spans(p.doc_spans[0]), spans(p.doc_spans[2])
    assert t0 != t2
    ids = enc["input_ids"]
    assert ids[t0[0] : t0[1]] == ids[t2[0] : t2[1]]  # same text, same tokens, different places
    assert tok.decode(ids[t0[0] : t0[1]]).strip() == "same text here"
    q = spans(p.query_span)
    assert tok.decode(ids[q[0] : q[1]]).strip().endswith("Query: what?")
    assert "<|im_end|>" not in tok.decode(ids[q[0] : q[1]])


def test_token_spans_cover_merged_tokens():
    # Token 1 spans characters 3..8 and straddles the span boundary at 5: it belongs to the span.
    offsets = [(0, 0), (0, 3), (3, 8), (8, 10), (10, 10)]
    spans = TokenSpans(offsets)
    assert spans((5, 9)) == (2, 4)
    assert spans((0, 3)) == (1, 2)
    assert spans((4, 4)) == (0, 0)
    assert spans((20, 30)) == (0, 0)
