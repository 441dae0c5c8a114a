#!/usr/bin/env node
// Writes expected-NAME.jsonl for each tokenizer in files/: for every corpus text, the ids
// Hugging Face tokenizers gives (with and without special tokens) and its decodes.
//
// The texts: corpus.jsonl (hand-written cases) plus deterministic pseudo-random lines built
// from fragments (several scripts, code, whitespace runs, emoji, digits, special tokens).
//
// Needs the HF binding: tools/fetch-tokenizers --with-hf installs it in files/node_modules.
//   node tests/tokenizer/make_expected.js
'use strict';
const fs = require('fs');
const path = require('path');
const here = __dirname;
const files = path.join(here, 'files');
const { Tokenizer } = require(path.join(files, 'node_modules', '@anush008', 'tokenizers'));

const NAMES = ['llama2', 'llama3', 'qwen3', 'gemma3', 'gemma2', 'gpt4o'];
const N_RANDOM = 200;

const FRAGMENTS = [
  'the', ' the', 'The', ' quick', 'brown', ' fox', "'s", "'re", "n't", ' I', "'ll", 'ing',
  ' ', '  ', '   ', '\t', '\n', '\n\n', '\r\n', '    ', ' \n ', '\u00a0', '\u3000',
  '0', '7', '42', '1234', '98765', '3.14', '-1', '1e9', '١٢٣',
  '.', ',', '!', '?', '...', '—', '–', '(', ')', '[', ']', '{', '}', '<', '>', '/', '\\',
  '"', "'", '`', '#', '$', '%', '&', '*', '+', '=', '_', '|', '~', '^', '@', ':', ';',
  'def ', 'return ', 'x = y + 1', '==', '!=', '->', '=>', '//', '/*', '*/', '::', '&&',
  'é', 'e\u0301', 'Å', 'A\u030a', 'ﬁ', '①', 'ｆｕｌｌ', 'ß', 'İ', 'Σ',
  '日本', '語', 'です', '中文', '你好', '한국어', '안녕', 'Привет', 'мир', 'Ελλάδα',
  'مرحبا', 'שלום', 'नमस्ते', 'สวัสดี', 'Việt',
  '😀', '👍🏽', '❤️', '👨‍👩‍👧', '🏳️‍🌈', '🇫🇷', '1️⃣', '𝔘', '\u200d', '\u200b', '\ufeff',
  '<s>', '</s>', '<unk>', '<|im_start|>', '<|im_end|>', '<|endoftext|>', '<|begin_of_text|>',
  '<|eot_id|>', '<bos>', '<eos>', '<start_of_turn>', '<end_of_turn>', '<pad>', '<0x41>',
];

// xorshift32, so the lines are the same on every machine
let state = 0x9e3779b9;
function rand(n) {
  state ^= state << 13; state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5; state >>>= 0;
  return state % n;
}

function texts() {
  const out = fs.readFileSync(path.join(here, 'corpus.jsonl'), 'utf8')
    .split('\n').filter((l) => l.length).map((l) => JSON.parse(l));
  for (let i = 0; i < N_RANDOM; i++) {
    let s = '';
    const n = 1 + rand(30);
    for (let k = 0; k < n; k++) s += FRAGMENTS[rand(FRAGMENTS.length)];
    out.push(s);
  }
  return out;
}

// ASCII-only JSON, one record a line
function line(obj) {
  return JSON.stringify(obj).replace(/[\u007f-\uffff]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
}

(async () => {
  const all = texts();
  for (const name of NAMES) {
    const file = path.join(files, name, 'tokenizer.json');
    if (!fs.existsSync(file)) { console.error(`skip ${name}: ${file} missing`); continue; }
    const tok = Tokenizer.fromFile(file);
    const rows = [];
    for (const text of all) {
      const withSpecial = Array.from((await tok.encode(text, null, { addSpecialTokens: true })).getIds());
      const plain = Array.from((await tok.encode(text, null, { addSpecialTokens: false })).getIds());
      rows.push(line({
        text, ids: withSpecial, ids_no_special: plain,
        decode: await tok.decode(withSpecial, false),
        decode_skip: await tok.decode(withSpecial, true),
      }));
    }
    fs.writeFileSync(path.join(here, `expected-${name}.jsonl`), rows.join('\n') + '\n');
    console.log(`${name}: ${rows.length} texts`);
  }
})();
