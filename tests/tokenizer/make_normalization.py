#!/usr/bin/python3
"""Writes normalization.jsonl: inputs and their NFC / NFKC / NFD forms, from Debian's
system Python unicodedata (the same source as src/tokenizer_unicode_gen.py).

    /usr/bin/python3 tests/tokenizer/make_normalization.py
"""
import json
import os
import random
import unicodedata as ud

here = os.path.dirname(os.path.abspath(__file__))
texts = [json.loads(l) for l in open(os.path.join(here, 'corpus.jsonl'))]
# every character that changes under some form, in runs, each followed by a combining mark
changing = [chr(c) for c in range(0x110000)
            if not (0xD800 <= c < 0xE000) and
            any(ud.normalize(f, chr(c)) != chr(c) for f in ('NFD', 'NFKD'))]
for i in range(0, len(changing), 64):
    texts.append(''.join(changing[i:i + 64]))
marks = [chr(c) for c in range(0x300, 0x370)] + ['\u0323', '\u0338', '\u05b0', '\u0e38', '\u3099']
bases = ['a', 'e', 'o', 'A', 'E', 'u', 'n', '\u1100', '\u1161', '\u11a8', '\uac00', 'か', 'ᄀ',
         'ﬁ', '①', ' ', 'x']
rng = random.Random(4)
for _ in range(400):
    texts.append(''.join(rng.choice(bases if rng.random() < 0.5 else marks)
                         for _ in range(rng.randint(1, 12))))
with open(os.path.join(here, 'normalization.jsonl'), 'w') as f:
    for t in texts:
        f.write(json.dumps({'text': t, 'nfc': ud.normalize('NFC', t), 'nfkc': ud.normalize('NFKC', t),
                            'nfd': ud.normalize('NFD', t)}, ensure_ascii=False) + '\n')
print(len(texts), 'texts, Unicode', ud.unidata_version)
