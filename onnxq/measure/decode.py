"""Prompt (prefill) and per-token decode latency of decoder LLMs with a key/value cache, on a real EP.

A decoder here has an ``input_ids`` input [batch, sequence], cache inputs ``past*`` [batch, (heads,) past, dim]
(any names with "past"/"cache"), logits as its first output (or ``logits``), and one ``present*`` output per
cache input (paired by name, ``present`` -> ``past_key_values``, else in order). ``attention_mask`` (ones over
past + new tokens) and ``position_ids`` (their positions) are fed when the graph has them.

One round per model: a prefill of ``prompt_tokens`` tokens with an empty cache, then ``new_tokens`` decode steps
of one token each, every step fed the cache the previous run returned. Models are interleaved round by round.
The tokens are real text from ``data`` (``input_ids`` rows joined) or, without data, seeded random ids below
the vocabulary size. On a GPU EP the cache stays in device memory between steps (IO binding: each step's
present values are bound as the next step's past), so a step times the model, not host copies of the cache;
on the CPU the runs take and return numpy arrays. Reported: prefill p50/min/max over the rounds, decode
ms per token (p50 and p90 over every step of every round), tokens per second (1000 / decode p50), and the
speedup of each against the first model.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxq.errors import ConfigError, DataError, ModelValidationError
from onnxq.runtime.eps import EPS
from onnxq.runtime.session import RunnerSession, SessionSpec, create_session

_CACHE = re.compile(r"past|cache", re.IGNORECASE)


@dataclass(frozen=True)
class DecodeConfig:
    prompt_tokens: int = 128
    new_tokens: int = 32
    rounds: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "new_tokens", "rounds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}",
                                  hint="e.g. --prompt-tokens 128 --new-tokens 32")  # fmt: skip


@dataclass
class _Layout:
    ids: str
    logits: str
    cache: list[tuple[str, str, tuple]]  # (past input, present output, the input's dims)
    mask: str | None
    positions: str | None
    vocab: int | None
    float_type: Any  # the cache's numpy dtype


def decoder_layout(model: Any, where: str) -> _Layout:
    """How to feed ``model`` token by token; ModelValidationError naming what is missing."""
    from onnxq.data import input_specs

    specs = {s.name: s for s in input_specs(model)}
    outs = [o.name for o in model.graph.output]
    hint = "--decode measures decoder LLMs: input_ids and past key/value inputs -> logits and present outputs"
    if "input_ids" not in specs:
        raise ModelValidationError(f"{where} has no input_ids input (its inputs: {sorted(specs)})", hint=hint)
    past = [n for n in specs if _CACHE.search(n)]
    other = sorted(set(specs) - {"input_ids", "attention_mask", "position_ids", *past})
    if other:
        raise ModelValidationError(f"{where}: --decode cannot feed the inputs {other}", hint=hint)
    logits = "logits" if "logits" in outs else outs[0]
    present = [n for n in outs if n != logits and "present" in n.lower()]
    if not past or len(present) != len(past):
        raise ModelValidationError(f"{where} has {len(past)} cache inputs and {len(present)} present outputs",
                                   hint=hint + ", one present output per past input")  # fmt: skip
    by_name = {p.lower().replace("present", "past_key_values"): p for p in present}
    pairs = [(n, by_name.get(n.lower(), present[i])) for i, n in enumerate(past)]
    for name, _ in pairs:
        if len(specs[name].shape) < 3 or sum(not isinstance(d, int) for d in specs[name].shape[1:]) != 1:
            raise ModelValidationError(f"{where}: cache input {name!r} is not [batch, (heads,) past, dim] with one "
                                       f"symbolic length (it is {list(specs[name].shape)})", hint=hint)  # fmt: skip
    dims = next((vi.type.tensor_type.shape.dim for vi in model.graph.output if vi.name == logits), [])
    vocab = int(dims[-1].dim_value) if dims and dims[-1].HasField("dim_value") else None
    return _Layout("input_ids", logits, [(n, p, tuple(specs[n].shape)) for n, p in pairs],
                   "attention_mask" if "attention_mask" in specs else None,
                   "position_ids" if "position_ids" in specs else None, vocab, specs[past[0]].dtype)  # fmt: skip


class _Decoder:
    def __init__(self, path: Any, spec: SessionSpec) -> None:
        from onnxq.model import load_model

        model = load_model(path, external_data=False)  # the interface only: the session reads the weights
        self.layout = decoder_layout(model, str(path))
        del model
        self.runner: RunnerSession = create_session(path, spec)
        self.gpu = EPS[spec.ep].gpu
        self.device = ("cuda", spec.device_id)

    def _extra(self, feeds: dict[str, Any], start: int, count: int) -> dict[str, Any]:
        lay = self.layout
        if lay.mask:
            feeds[lay.mask] = np.ones((1, start + count), np.int64)
        if lay.positions:
            feeds[lay.positions] = np.arange(start, start + count, dtype=np.int64)[None, :]
        return feeds

    def empty_cache(self) -> dict[str, np.ndarray]:
        out = {}
        for name, _, dims in self.layout.cache:
            shape = [1 if i == 0 else (0 if not isinstance(d, int) else d) for i, d in enumerate(dims)]
            out[name] = np.zeros(shape, self.layout.float_type)
        return out

    def round(self, tokens: np.ndarray, prompt: int, steps: int) -> tuple[float, list[float], np.ndarray]:
        """(prefill seconds, seconds of each decode step, the last step's logits)."""
        return self._round_bound(tokens, prompt, steps) if self.gpu else self._round_plain(tokens, prompt, steps)

    def _round_plain(self, tokens: np.ndarray, prompt: int, steps: int) -> tuple[float, list[float], np.ndarray]:
        sess, lay = self.runner.session, self.layout
        names = [o.name for o in sess.get_outputs()]
        feeds = self._extra({lay.ids: tokens[None, :prompt], **self.empty_cache()}, 0, prompt)
        start = time.perf_counter()
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        prefill = time.perf_counter() - start
        times = []
        for i in range(steps):
            pos = prompt + i
            feeds = self._extra({lay.ids: tokens[None, pos : pos + 1], **{p: out[q] for p, q, _ in lay.cache}},
                                pos, 1)  # fmt: skip
            start = time.perf_counter()
            out = dict(zip(names, sess.run(None, feeds), strict=True))
            times.append(time.perf_counter() - start)
        return prefill, times, np.asarray(out[lay.logits])

    def _round_bound(self, tokens: np.ndarray, prompt: int, steps: int) -> tuple[float, list[float], np.ndarray]:
        sess, lay = self.runner.session, self.layout
        names = [o.name for o in sess.get_outputs()]
        kind, index = self.device

        def run(feeds: dict[str, Any], past: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            io = sess.io_binding()
            for name, value in feeds.items():  # token ids, mask, positions: a few bytes; the empty cache
                io.bind_cpu_input(name, value)
            for name, value in past.items():
                io.bind_ortvalue_input(name, value)
            for name in names:
                io.bind_output(name, kind, index)
            io.synchronize_inputs()
            start = time.perf_counter()
            sess.run_with_iobinding(io)
            io.synchronize_outputs()
            took = time.perf_counter() - start
            return took, dict(zip(names, io.get_outputs(), strict=True))

        prefill, out = run(self._extra({lay.ids: tokens[None, :prompt], **self.empty_cache()}, 0, prompt), {})
        times = []
        for i in range(steps):
            pos = prompt + i
            took, out = run(self._extra({lay.ids: tokens[None, pos : pos + 1]}, pos, 1),
                            {p: out[q] for p, q, _ in lay.cache})  # fmt: skip
            times.append(took)
        return prefill, times, out[lay.logits].numpy()


def _tokens(data: Any, need: int, vocab: int | None, seed: int) -> tuple[np.ndarray, str]:
    if data is not None:
        from onnxq.measure.perplexity import token_rows

        ids = token_rows(data).reshape(-1)
        if len(ids) < need:
            raise DataError(f"{data} holds {len(ids)} tokens, fewer than --prompt-tokens + --new-tokens = {need}",
                            hint="give more text, or fewer tokens")  # fmt: skip
        if vocab is not None and int(ids[:need].max()) >= vocab:
            raise DataError(f"token id {int(ids[:need].max())} is outside the model's vocabulary of {vocab}",
                            hint="tokenize with this model's tokenizer")  # fmt: skip
        return ids[:need].astype(np.int64), f"the first {need} tokens of {data}"
    if vocab is None:
        raise DataError("the logits' vocabulary size is not fixed in the graph, so random token ids cannot be drawn",
                        hint="give real tokens with --data TOKENS.npz (input_ids)")  # fmt: skip
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, need, dtype=np.int64), f"{need} random token ids (seed {seed})"


def decode_bench(models: list[Any], spec: SessionSpec, config: DecodeConfig | None = None,
                 data: Any = None) -> dict[str, Any]:  # fmt: skip
    """``{"decode": [one entry per model], "tokens": where the tokens came from}`` (see the module docstring)."""
    config = config or DecodeConfig()
    need = config.prompt_tokens + config.new_tokens
    decoders = [_Decoder(path, spec) for path in models]
    tokens, source = _tokens(data, need, decoders[0].layout.vocab, config.seed)
    for d in decoders[1:]:
        if d.layout.vocab is not None and int(tokens.max()) >= d.layout.vocab:
            raise DataError(f"token id {int(tokens.max())} is outside a model's vocabulary of {d.layout.vocab}",
                            hint="compare models with one tokenizer")  # fmt: skip
    for d in decoders:  # warm-up: one short round each, untimed
        d.round(tokens, min(8, config.prompt_tokens), min(2, config.new_tokens))
    prefill: list[list[float]] = [[] for _ in decoders]
    steps: list[list[float]] = [[] for _ in decoders]
    for _ in range(config.rounds):
        for i, d in enumerate(decoders):
            took, times, logits = d.round(tokens, config.prompt_tokens, config.new_tokens)
            if not np.isfinite(logits).all():
                raise ModelValidationError(f"{models[i]} returned non-finite logits while decoding",
                                           hint="the model is broken: check it with onnxq eval --perplexity")
            prefill[i].append(took)
            steps[i].extend(times)
    entries = [_entry(models[i], d, prefill[i], steps[i], config) for i, d in enumerate(decoders)]
    for e in entries:
        e["prefill_speedup_vs_first"] = entries[0]["prefill_ms"]["p50"] / e["prefill_ms"]["p50"]
        e["decode_speedup_vs_first"] = entries[0]["decode_ms_per_token"]["p50"] / e["decode_ms_per_token"]["p50"]
    return {"decode": entries, "tokens": source, "config": dict(vars(config))}


def _entry(path: Any, d: _Decoder, prefill: list[float], steps: list[float], config: DecodeConfig) -> dict:
    ms = sorted(1e3 * s for s in steps)
    pre = sorted(1e3 * s for s in prefill)
    p50 = statistics.median(ms)
    return {
        "model": str(path),
        "ep": d.runner.spec.ep,
        "prompt_tokens": config.prompt_tokens,
        "new_tokens": config.new_tokens,
        "rounds": config.rounds,
        "prefill_ms": {"p50": statistics.median(pre), "min": pre[0], "max": pre[-1]},
        "prefill_tokens_per_s": 1e3 * config.prompt_tokens / statistics.median(pre),
        "decode_ms_per_token": {"p50": p50, "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))], "min": ms[0],
                                "max": ms[-1]},  # fmt: skip
        "decode_tokens_per_s": 1e3 / p50,
        "cache_on_device": d.gpu,
        "ep_nodes": dict(d.runner.ep_nodes),
        "warnings": list(d.runner.warnings),
    }


def format_decode(result: dict[str, Any]) -> str:
    """The human table of :func:`decode_bench`'s result."""
    from onnxq.report.tables import fmt_num

    head = ["model", "ep", "prefill ms", "prefill tok/s", "decode ms/token (p50)", "p90", "tokens/s",
            "decode speedup", "nodes per EP"]  # fmt: skip
    rows = [[e["model"], e["ep"], fmt_num(e["prefill_ms"]["p50"]), fmt_num(e["prefill_tokens_per_s"]),
             fmt_num(e["decode_ms_per_token"]["p50"]), fmt_num(e["decode_ms_per_token"]["p90"]),
             fmt_num(e["decode_tokens_per_s"]), f"{e['decode_speedup_vs_first']:.2f}x",
             ", ".join(f"{k.removesuffix('ExecutionProvider')} {n}" for k, n in e["ep_nodes"].items())]
            for e in result["decode"]]  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *rows]]
    e = result["decode"][0]
    lines.append(f"(prefill of {e['prompt_tokens']} tokens, then {e['new_tokens']} decode steps of one token with "
                 f"the KV cache, {e['rounds']} rounds, models interleaved; tokens: {result['tokens']}; speedup = "
                 "the first model's p50 / p50)")  # fmt: skip
    lines += [f"warning: {x['model']}: {w}" for x in result["decode"] for w in x["warnings"]]
    return "\n".join(lines)
