from ovearth.model.tokenizer import builtin_tokenizer, load_tokenizer, tokenize


def test_builtin_tokenizer_matches_clip_ids():
    tok = builtin_tokenizer()
    assert len(tok) == 49408
    # CLIP's published ids for this sentence (start 49406, end 49407)
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tokenize_pads_and_truncates_to_32_like_sam3_processor():
    out = tokenize(builtin_tokenizer(), ["building", "word " * 50])
    assert out.input_ids.shape == (2, 32)
    assert out.attention_mask[0].tolist() == [1, 1, 1] + [0] * 29
    assert out.input_ids[0, 3:].eq(49407).all()  # padded with <|endoftext|>
    assert out.input_ids[1, -1].item() == 49407 and out.attention_mask[1].all()


def test_saved_tokenizer_is_used_and_missing_one_falls_back(tmp_path):
    builtin_tokenizer().save_pretrained(tmp_path / "with")
    (tmp_path / "without").mkdir()
    assert load_tokenizer(tmp_path / "with")("road")["input_ids"] == builtin_tokenizer()("road")["input_ids"]
    assert load_tokenizer(tmp_path / "without") is builtin_tokenizer()
