"""The embedded GGUF run by PyTorch (transformers dequantizes it), with a dynamic batcher: the
backend for a GPU.

The agents make many short calls per item, one after another (a card is ~12 one-line fields).
A GPU is only busy when many items are in flight, so the job runs items on threads and every
`complete()` call lands in one queue; a single worker takes what is waiting (up to
`max_batch`), runs one left-padded `generate()` per decoding setting and hands each caller its
text. The same weights as the llama.cpp backend, hence the same model identity in cache keys
(as a llama.cpp CUDA build would be); sampling matches llama.cpp's: greedy by default, a repeat
penalty over the last 64 tokens only, stops cut from the text.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections import defaultdict
from concurrent.futures import Future
from dataclasses import dataclass

from reaseq.offline.makr.llm import (
    Completion,
    LLMConfig,
    LLMError,
    PromptRejected,
    Sampling,
    model_identity,
    resolve_model_path,
)

REPEAT_LAST_N = 64  # llama.cpp's default window for repeat_penalty


def torch_device(requested: str) -> str:
    """'auto' -> cuda when torch sees a GPU, else cpu; 'cuda' without one is a clear error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise LLMError("device cuda: no CUDA device is visible to torch here")
    if requested not in ("cpu", "cuda"):
        raise LLMError(f"device must be auto, cpu or cuda, not {requested!r}")
    return requested


def recent_repeat_penalty(penalty: float, prompt_width: int, last_n: int = REPEAT_LAST_N):
    """llama.cpp's repeat penalty as a transformers logits processor: only the last `last_n`
    *generated* tokens are penalised (llama.cpp's sampler sees only the tokens it accepted).
    transformers' own penalises the whole prompt too, which here is the few-shot examples and the
    item's text, the very words a card should copy (measured: its first token changed)."""
    from transformers import LogitsProcessor

    class RecentRepeatPenalty(LogitsProcessor):
        def __call__(self, input_ids, scores):
            recent = input_ids[:, prompt_width:][:, -last_n:]
            if recent.shape[1] == 0:
                return scores
            picked = scores.gather(1, recent)
            picked = picked.where(picked < 0, picked / penalty)
            picked = picked.where(picked >= 0, picked * penalty)
            return scores.scatter(1, recent, picked)

    return RecentRepeatPenalty()


@dataclass
class _Request:
    prompt: str
    sampling: Sampling
    future: Future


class BatchedTorchLLM:
    """A GGUF on torch (CUDA when present), calls from many threads fused into batches."""

    def __init__(self, cfg: LLMConfig):
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as err:  # pragma: no cover - depends on the install
            raise LLMError("the torch backend needs transformers, gguf and accelerate") from err
        path = resolve_model_path(cfg.model)
        self.name = model_identity(cfg)
        self.device = torch_device(cfg.device)
        self.max_batch = max(1, cfg.concurrency)
        self.n_ctx = cfg.n_ctx
        self.seed = cfg.seed
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, dtype=dtype
            )
        except (ValueError, OSError, ImportError) as err:
            raise LLMError(f"transformers cannot load {path.name}: {err}") from err
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = model.to(self.device).eval()
        self.batches = 0  # generate() calls, for the throughput report
        self.rows = 0
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._worker = threading.Thread(target=self._serve, name="llm-batcher", daemon=True)
        self._worker.start()

    # -- callers ---------------------------------------------------------------------------
    def complete(self, prompt: str, sampling: Sampling) -> Completion:
        if sampling.json_schema:
            raise LLMError(
                "the torch backend has no constrained decoding: use --output fields, or the "
                "embedded / openai backend for json"
            )
        if not self._worker.is_alive():
            raise LLMError("the torch backend's batcher has stopped")
        request = _Request(prompt, sampling, Future())
        self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=10)

    @functools.cache  # noqa: B019 - one backend per process, a handful of stop sets
    def _stop_token_ids(self, stops: tuple[str, ...]) -> list[int]:
        """EOS plus every vocabulary token whose text holds one of the stop characters."""
        texts = self.tokenizer.batch_decode([[i] for i in range(len(self.tokenizer))])
        ids = [i for i, text in enumerate(texts) if any(s in text for s in stops)]
        eos = self.tokenizer.eos_token_id
        return sorted({*ids, *([eos] if eos is not None else [])})

    # -- the batcher -----------------------------------------------------------------------
    def _take(self) -> list[_Request] | None:
        """What is waiting, up to max_batch: blocks for the first request, then gathers for as
        long as more keep arriving within 5 ms (callers resubmit right after a batch returns)."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=0.005)
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _serve(self) -> None:
        while (batch := self._take()) is not None:
            groups: dict[tuple, list[_Request]] = defaultdict(list)
            for request in batch:
                s = request.sampling
                groups[(s.temperature, s.top_p, s.repeat_penalty, tuple(s.stop))].append(request)
            for group in groups.values():
                try:
                    for request, done in zip(group, self._generate(group), strict=True):
                        if isinstance(done, Exception):
                            request.future.set_exception(done)
                        else:
                            request.future.set_result(done)
                except Exception as err:  # every caller must hear of it
                    failure = LLMError(f"torch backend failed on a batch: {err}")
                    for request in group:
                        if not request.future.done():
                            request.future.set_exception(failure)

    def _generate(self, group: list[_Request]) -> list[Completion | Exception]:
        import torch

        sampling = group[0].sampling
        encoded = self.tokenizer([r.prompt for r in group])["input_ids"]
        out: list[Completion | Exception] = [
            PromptRejected(f"prompt of {len(ids)} tokens exceeds the context of {self.n_ctx}")
            if len(ids) + r.sampling.max_tokens > self.n_ctx
            else None
            for r, ids in zip(group, encoded, strict=True)
        ]
        live = [i for i, o in enumerate(out) if o is None]
        if not live:
            return out
        batch = self.tokenizer.pad(
            {"input_ids": [encoded[i] for i in live]}, return_tensors="pt", padding=True
        ).to(self.device)
        max_new = max(group[i].sampling.max_tokens for i in live)
        kwargs: dict = {"do_sample": sampling.temperature > 0}
        if sampling.temperature > 0:
            kwargs |= {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
            torch.manual_seed(self.seed + self.batches)
        if sampling.stop and all(len(stop) == 1 for stop in sampling.stop):
            # a one-character stop ends a row at the first token holding it: a token-id check
            # on the GPU, where stop_strings would scan every row's text at each step
            kwargs["eos_token_id"] = self._stop_token_ids(tuple(sampling.stop))
        elif sampling.stop:
            kwargs |= {"stop_strings": list(sampling.stop), "tokenizer": self.tokenizer}
        width = batch["input_ids"].shape[1]
        processors = []
        if sampling.repeat_penalty and sampling.repeat_penalty != 1.0:
            processors.append(recent_repeat_penalty(sampling.repeat_penalty, width))
        with torch.inference_mode():
            generated = self.model.generate(
                **batch,
                max_new_tokens=max_new,
                logits_processor=processors,
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
        self.batches += 1
        self.rows += len(live)
        for row, i in enumerate(live):
            limit = group[i].sampling.max_tokens
            ids = generated[row, width : width + limit].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            used = len(ids)
            for stop in sampling.stop:
                if stop in text:
                    text = text.split(stop, 1)[0]
            while used and ids[used - 1] == self.tokenizer.pad_token_id:
                used -= 1
            out[i] = Completion(text=text, prompt_tokens=len(encoded[i]), completion_tokens=used)
        return out
