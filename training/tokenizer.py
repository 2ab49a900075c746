"""Build a tiny CLIP BPE tokenizer for the shapes grammar.

vocab = all 256 byte-level characters (with and without the end-of-word marker
`</w>`), the merge intermediates, every grammar word as ONE token, and the two CLIP
special tokens. Unknown words decompose into sub-words / characters, never fail.

    python -m training.tokenizer --out models/denoise-tiny/tokenizer
    python -m training.tokenizer --learn   # re-learn the canonical files (changes token ids!)

The ids come from the canonical files in training/tokenizer_files/, not from a fresh BPE
run: the `tokenizers` BPE trainer breaks ties between equally frequent merges in hash
order, which differs per process (in four runs "at</w>" got ids 531, 531, 532, 533), so
each training process tokenized "at" and "an" differently from the one that exported the
tokenizer. The canonical files hold the ids the shipped text encoder was last trained on.
"""
import argparse
import json
import os


from training.data import EXTRA_WORDS, GRAMMAR_WORDS

CANONICAL_DIR = os.path.join(os.path.dirname(__file__), "tokenizer_files")

MODEL_MAX_LENGTH = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = sorted(set(GRAMMAR_WORDS + EXTRA_WORDS))


def bytes_to_unicode():
    """GPT-2/CLIP byte -> printable unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def canonical_vocab_and_merges():
    """The committed vocab.json / merges.txt (see the module docstring)."""
    vocab = json.load(open(os.path.join(CANONICAL_DIR, "vocab.json"), encoding="utf-8"))
    lines = open(os.path.join(CANONICAL_DIR, "merges.txt"), encoding="utf-8").read().splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return vocab, merges


def learn_vocab_and_merges(words=WORDS):
    """Learn BPE merges on the grammar word list until every word is one token
    (a real BPE training run, so merge ranks are consistent), then add all
    byte-level characters with and without `</w>` as fallback tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    chars = list(bytes_to_unicode().values())
    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(vocab_size=100000, min_frequency=1, show_progress=False,
                                  initial_alphabet=chars, end_of_word_suffix="</w>")
    bpe.train_from_iterator([" ".join(words)] * 2, trainer=trainer)
    learned = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    vocab = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    for t in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(t, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    return vocab, merges


def build_tokenizer(out_dir=None):
    from transformers import CLIPTokenizer
    vocab, merges = canonical_vocab_and_merges()
    tok = CLIPTokenizer(vocab=vocab, merges=merges,
                        model_max_length=MODEL_MAX_LENGTH)
    tok.model_max_length = MODEL_MAX_LENGTH
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        tok.save_pretrained(out_dir)
        # slow-format files too (transformers 5 may only write tokenizer.json)
        write_vocab_and_merges(out_dir, vocab, merges)
        cfg_path = os.path.join(out_dir, "tokenizer_config.json")
        cfg = json.load(open(cfg_path)) if os.path.exists(cfg_path) else {}
        cfg.update({"model_max_length": MODEL_MAX_LENGTH, "tokenizer_class": "CLIPTokenizer",
                    "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS,
                    "do_lower_case": True})
        json.dump(cfg, open(cfg_path, "w"), indent=2)
    return tok


def write_vocab_and_merges(out_dir, vocab, merges):
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")


def check_tokenizer(tok):
    """Every grammar word -> exactly one id; unknown words don't crash."""
    for w in WORDS:
        ids = tok(w, add_special_tokens=False).input_ids
        assert len(ids) == 1, (w, ids, tok.convert_ids_to_tokens(ids))
    ids = tok("a zebra-like xyzzy ünïcode shape!", add_special_tokens=False).input_ids
    assert len(ids) > 0 and all(i != tok.unk_token_id or True for i in ids)
    enc = tok("a red circle", padding="max_length", max_length=tok.model_max_length)
    assert len(enc.input_ids) == MODEL_MAX_LENGTH
    return True


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/denoise-tiny/tokenizer")
    ap.add_argument("--learn", action="store_true", help="re-learn training/tokenizer_files (new ids: retrain!)")
    a = ap.parse_args()
    if a.learn:
        os.makedirs(CANONICAL_DIR, exist_ok=True)
        write_vocab_and_merges(CANONICAL_DIR, *learn_vocab_and_merges())
    tok = build_tokenizer(a.out)
    check_tokenizer(tok)
    from transformers import AutoTokenizer, CLIPTokenizer
    for cls in (CLIPTokenizer, AutoTokenizer):
        t2 = cls.from_pretrained(a.out)
        check_tokenizer(t2)
    print("vocab", len(tok), "saved", sorted(os.listdir(a.out)))
    print(tok.tokenize("an outlined small red circle on the left and a zebra on a white background"))
