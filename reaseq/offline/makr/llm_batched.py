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
import logging
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

log = logging.getLogger(__name__)

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
        self.oom_splits = 0  # batches halved after running out of GPU memory
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
        """One answer or one error per request: a prompt the tokenizer cannot read or one
        longer than the context fails alone, and the rest of the group still runs."""
        out: list[Completion | Exception | None] = []
        encoded: dict[int, list[int]] = {}
        for i, request in enumerate(group):
            try:
                request.prompt.encode("utf-8")
                ids = self.tokenizer(request.prompt)["input_ids"]
            except UnicodeEncodeError as err:
                where = f"a lone surrogate at character {err.start}"
                out.append(PromptRejected(f"the prompt is not valid UTF-8 text: {where}"))
                continue
            except (TypeError, ValueError) as err:
                out.append(PromptRejected(f"the tokenizer cannot read this prompt: {err}"))
                continue
            if len(ids) + request.sampling.max_tokens > self.n_ctx:
                out.append(
                    PromptRejected(
                        f"prompt of {len(ids)} tokens exceeds the context of {self.n_ctx}"
                    )
                )
                continue
            encoded[i] = ids
            out.append(None)
        self._generate_rows(group, list(encoded), encoded, out)
        return out  # type: ignore[return-value] - every None was filled

    def _generate_rows(
        self, group: list[_Request], rows: list[int], encoded: dict[int, list[int]], out: list
    ) -> None:
        """Runs `rows` as one batch; when the GPU runs out of memory, halves it (and lowers
        max_batch for the batches after it) instead of failing every caller in it."""
        import torch

        if not rows:
            return
        try:
            done = self._generate_batch(
                group[0].sampling, [encoded[i] for i in rows], [group[i] for i in rows]
            )
        except torch.OutOfMemoryError as err:
            if self.device == "cuda":
                torch.cuda.empty_cache()
            if len(rows) == 1:
                out[rows[0]] = LLMError(f"out of memory generating a single prompt: {err}")
                return
            half = len(rows) // 2
            self.max_batch = max(1, min(self.max_batch, half))
            self.oom_splits += 1
            log.warning("out of memory at a batch of %d: max_batch is now %d", len(rows), half)
            self._generate_rows(group, rows[:half], encoded, out)
            self._generate_rows(group, rows[half:], encoded, out)
            return
        for i, completion in zip(rows, done, strict=True):
            out[i] = completion

    def _generate_batch(
        self, sampling: Sampling, encoded: list[list[int]], requests: list[_Request]
    ) -> list[Completion]:
        import torch

        batch = self.tokenizer.pad({"input_ids": encoded}, return_tensors="pt", padding=True).to(
            self.device
        )
        max_new = max(r.sampling.max_tokens for r in requests)
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
        self.rows += len(requests)
        answers = []
        for row, (request, prompt_ids) in enumerate(zip(requests, encoded, strict=True)):
            ids = generated[row, width : width + request.sampling.max_tokens].tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            used = len(ids)
            for stop in sampling.stop:
                if stop in text:
                    text = text.split(stop, 1)[0]
            while used and ids[used - 1] == self.tokenizer.pad_token_id:
                used -= 1
            answers.append(
                Completion(text=text, prompt_tokens=len(prompt_ids), completion_tokens=used)
            )
        return answers
